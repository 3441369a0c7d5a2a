//! Local embedding models for `uat`: a backend trait, a pure-Rust candle CPU backend
//! for BERT-family sentence-transformers folders, a dynamic batcher and a model
//! registry.
//!
//! The server wires `POST /v1/embeddings` as: parse `input` with
//! [`EmbeddingInput::from_json`], call [`Registry::embed`] with an [`EmbedRequest`],
//! render each vector as floats or with [`encode_base64`]. Admin routes use
//! [`Registry::list`], [`Registry::load`] and [`Registry::unload`].
//!
//! The engine is synchronous numeric code; the async-facing pieces (the
//! [`Batcher`] and the [`Registry`]) hand the compute to dedicated threads and
//! never run it on tokio's workers.
//!
//! Threads: forward passes run on the registry's [`ComputePool`]
//! (`embeddings.threads`); matrix products and the fused element-wise kernels
//! split work only inside it. candle reads `RAYON_NUM_THREADS` on every matrix
//! product to size its split (and otherwise probes the CPU list each time): a
//! binary that runs one compute thread gains ~10% on single-input throughput with
//! `RAYON_NUM_THREADS=1`, which also sizes rayon's global pool for every crate.

mod backend;
mod batcher;
pub mod bench;
mod bert;
mod error;
mod folder;
mod input;
mod kernels;
mod metrics;
mod registry;
mod tokenize;

pub use backend::{CandleBackend, EmbeddingBackend, ModelInfo};
pub use batcher::{Batcher, BatcherConfig, ComputePool, Reservation};
pub use bert::BertConfig;
pub use error::{EmbedError, Result};
pub use folder::{FolderSpec, Pooling};
pub use input::{
    EmbeddingInput, EncodingFormat, MAX_INPUTS, PreparedInput, check_dimensions, decode_base64,
    encode_base64, prepare,
};
pub use registry::{EmbedRequest, EmbedResponse, Loader, ModelStatus, Registry};
pub use tokenize::TextTokenizer;
