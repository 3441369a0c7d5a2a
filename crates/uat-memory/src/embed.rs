//! What the memory service needs from an embedding model.

use crate::error::{MemoryError, Result};
use crate::types::Embedding;
use std::future::Future;
use std::pin::Pin;

/// A boxed future, so [`Embedder`] can be a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Turns texts into vectors. The server adapts its embedding service to this;
/// tests use a deterministic fake.
pub trait Embedder: Send + Sync {
    /// The model name, stored next to each embedding.
    fn model(&self) -> &str;
    /// Length of every vector.
    fn dimension(&self) -> usize;
    /// One vector per text, in order, in one batched call.
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>>>;
}

/// Embeds `texts` with `e` in one call, checking that every text got a
/// vector of the model's dimension: what writes, searches and the backfill
/// all go through.
pub(crate) async fn embed_texts(e: &dyn Embedder, texts: &[String]) -> Result<Vec<Embedding>> {
    let vectors = e.embed(texts).await?;
    if vectors.len() != texts.len() {
        return Err(MemoryError::Embedding(format!(
            "asked for {} embeddings, got {}",
            texts.len(),
            vectors.len()
        )));
    }
    if let Some(v) = vectors.iter().find(|v| v.len() != e.dimension()) {
        return Err(MemoryError::Embedding(format!(
            "model `{}` returned {} dimensions instead of {}",
            e.model(),
            v.len(),
            e.dimension()
        )));
    }
    Ok(vectors
        .into_iter()
        .map(|vector| Embedding {
            model: e.model().to_string(),
            vector,
        })
        .collect())
}
