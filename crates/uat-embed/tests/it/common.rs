//! Shared test helpers: where the real model and the reference fixture live,
//! and the pieces every fake model shares.

use std::path::PathBuf;

/// The real all-MiniLM-L6-v2 folder from `UAT_TEST_MODEL_DIR`
/// (`scripts/fetch-model.sh` prints it). Missing: a failure under `CI=true`,
/// otherwise a loud skip (`None`).
pub fn model_dir(test: &str) -> Option<PathBuf> {
    match std::env::var_os("UAT_TEST_MODEL_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            assert!(
                d.join("model.safetensors").is_file(),
                "UAT_TEST_MODEL_DIR={} has no model.safetensors",
                d.display()
            );
            Some(d)
        }
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "{test}: UAT_TEST_MODEL_DIR is not set under CI=true; run \
                     `export UAT_TEST_MODEL_DIR=$(scripts/fetch-model.sh | tail -n1)`"
                );
            }
            // Straight to the stderr handle: the test harness captures eprintln!.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!! SKIPPING {test}: UAT_TEST_MODEL_DIR is not set. Run \
                 `export UAT_TEST_MODEL_DIR=$(scripts/fetch-model.sh | tail -n1)` !!!!!\n"
            );
            None
        }
    }
}

/// The reference fixture made with sentence-transformers.
#[derive(serde::Deserialize)]
pub struct Reference {
    pub max_seq_length: usize,
    pub dim: usize,
    pub sentences: Vec<String>,
    pub token_counts: Vec<usize>,
    pub embeddings: Vec<Vec<f32>>,
    pub edge_sentences: Vec<String>,
    pub edge_token_counts: Vec<usize>,
    pub edge_input_ids: Vec<Vec<u32>>,
    pub edge_embeddings: Vec<Vec<f32>>,
}

/// Folder of `sentences.json` and `reference_embeddings.json`: `UAT_EMBED_FIXTURES`,
/// else `shared/fixtures/embeddings` beside the repository.
pub fn fixture_dir() -> PathBuf {
    std::env::var_os("UAT_EMBED_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/embeddings")
        })
}

pub fn reference() -> Reference {
    let path = fixture_dir().join("reference_embeddings.json");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The info of a fake model: one dimension, one token a byte.
pub fn byte_info(max_seq_length: usize) -> uat_embed::ModelInfo {
    uat_embed::ModelInfo {
        dim: 1,
        max_seq_length,
        vocab_size: 256,
        pooling: uat_embed::Pooling::MEAN,
        normalize: false,
    }
}

/// The `info` (the field named) and `tokenize` (one token a byte) of a fake
/// model, inside its `impl EmbeddingBackend`.
macro_rules! byte_tokens {
    ($info:tt) => {
        fn info(&self) -> &uat_embed::ModelInfo {
            &self.$info
        }
        fn tokenize(&self, text: &str, _truncate: bool) -> uat_embed::Result<Vec<u32>> {
            Ok(text.bytes().map(u32::from).collect())
        }
    };
}
pub(crate) use byte_tokens;

/// A fake model's embeddings: one vector per input, holding its length.
pub fn lengths(seqs: &[&[u32]]) -> uat_embed::Result<Vec<Vec<f32>>> {
    Ok(seqs.iter().map(|s| vec![s.len() as f32]).collect())
}
