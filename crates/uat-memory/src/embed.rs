//! What the memory service needs from an embedding model.

use crate::error::Result;
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
