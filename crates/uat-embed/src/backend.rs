//! The backend trait and the candle CPU backend.

use crate::bert::{Bert, BertConfig};
use crate::error::{EmbedError, Result};
use crate::folder::{FolderSpec, Pooling};
use crate::tokenize::TextTokenizer;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Static facts about a loaded model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Width of the output vectors.
    pub dim: usize,
    /// Longest input in tokens, special tokens included (sentence-transformers'
    /// `max_seq_length`, capped by the position table).
    pub max_seq_length: usize,
    /// Vocabulary size: token-id inputs must be below it.
    pub vocab_size: usize,
    /// Pooling the folder declares.
    pub pooling: Pooling,
    /// Whether outputs are L2-normalized.
    pub normalize: bool,
}

/// An embedding model that turns token-id sequences into vectors.
///
/// Implementations are synchronous and CPU-bound: call them from a blocking pool
/// (the [`crate::Batcher`] does), never from an async worker.
pub trait EmbeddingBackend: Send + Sync + 'static {
    /// Static facts about the model.
    fn info(&self) -> &ModelInfo;

    /// Token ids of `text`, special tokens included, cut at `max_seq_length` when
    /// `truncate` (else [`EmbedError::InputTooLong`]).
    fn tokenize(&self, text: &str, truncate: bool) -> Result<Vec<u32>>;

    /// Embeds a batch of token-id sequences (each non-empty and at most
    /// `max_seq_length` long, ids below `vocab_size`) in one call, returning one
    /// vector per sequence in input order. The order and grouping of the batch do
    /// not change any result beyond float rounding.
    fn embed_ids(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>>;

    /// Bytes the loaded model holds (weights, plus an estimate for the tokenizer).
    fn memory_bytes(&self) -> u64;

    /// Number of encoder forward passes run so far.
    fn forward_passes(&self) -> u64;

    /// Tokenizes (truncating) and embeds `texts` in one batch: a convenience for
    /// tests and benchmarks.
    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids = texts
            .iter()
            .map(|t| self.tokenize(t, true))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        self.embed_ids(&refs)
    }
}

/// Tokens that one encoder call takes when a caller hands `embed_ids` a very large
/// batch; bounds the activation memory.
const MAX_TOKENS_PER_PASS: usize = 16 * 1024;

/// A BERT-family sentence-transformers model on candle's CPU backend.
pub struct CandleBackend {
    bert: Bert,
    tokenizer: TextTokenizer,
    info: ModelInfo,
    bytes: u64,
    passes: AtomicU64,
    load_time: Duration,
}

impl CandleBackend {
    /// Loads a sentence-transformers folder: `modules.json`, the pooling config,
    /// `sentence_bert_config.json`, and in the transformer folder `config.json`,
    /// `tokenizer.json` and `model.safetensors` (memory-mapped while loading).
    pub fn load(dir: &Path) -> Result<CandleBackend> {
        let started = Instant::now();
        let Plan {
            spec,
            config,
            max_seq_length,
        } = Plan::read(dir)?;
        let tdir = &spec.transformer_dir;
        let tok_path = tdir.join("tokenizer.json");
        let tokenizer = TextTokenizer::load(&tok_path, max_seq_length, spec.do_lower_case)?;
        let tokenizer_bytes = std::fs::metadata(&tok_path).map(|m| m.len()).unwrap_or(0);
        let vocab_size = config.vocab_size;
        if tokenizer.vocab_size() > vocab_size {
            return Err(EmbedError::load(
                dir,
                format!(
                    "tokenizer has {} tokens, the model only {vocab_size}",
                    tokenizer.vocab_size()
                ),
            ));
        }
        let hidden = config.hidden_size;
        let bert = Bert::load(config, &tdir.join("model.safetensors"))?;
        let info = ModelInfo {
            dim: spec.pooling.output_dim(hidden),
            max_seq_length,
            vocab_size,
            pooling: spec.pooling,
            normalize: spec.normalize,
        };
        let bytes = bert.weight_bytes() + tokenizer_bytes;
        Ok(CandleBackend {
            bert,
            tokenizer,
            info,
            bytes,
            passes: AtomicU64::new(0),
            load_time: started.elapsed(),
        })
    }

    /// Checks a folder without loading it, and returns the bytes it will take
    /// once loaded: reads the module list, the pooling and model configs as
    /// [`CandleBackend::load`] does, checks that the tokenizer and weights
    /// files are there, and reads the weights file's header. The estimate is
    /// the tokenizer file's size plus every tensor widened to f32 (as the
    /// model holds them: an f16 or bf16 file takes twice its size). A folder
    /// that passes can still fail to load (a malformed tokenizer or weights
    /// file), but the usual mistakes are caught cheaply; the registry runs
    /// this before it unloads other models to make room.
    pub fn check(dir: &Path) -> Result<u64> {
        let plan = Plan::read(dir)?;
        let mut bytes = 0u64;
        for f in ["tokenizer.json", "model.safetensors"] {
            let path = plan.spec.transformer_dir.join(f);
            let len = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => m.len(),
                Ok(_) => return Err(EmbedError::load(&path, "not a file")),
                Err(e) => return Err(EmbedError::load(&path, e)),
            };
            let b = if f == "model.safetensors" {
                f32_weight_bytes(&path)?
            } else {
                len
            };
            bytes = bytes.saturating_add(b);
        }
        Ok(bytes)
    }

    /// How long [`CandleBackend::load`] took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Runs one encoder pass over `seqs` (sorted by length) and pools into `out`.
    fn pass(&self, seqs: &[&[u32]], out: &mut Vec<Vec<f32>>) -> Result<()> {
        self.passes.fetch_add(1, Ordering::Relaxed);
        let hidden_states = self.bert.forward(seqs)?;
        let hidden = self.bert.config().hidden_size;
        let flat = hidden_states.flatten_all()?.to_vec1::<f32>()?;
        let mut offset = 0;
        for s in seqs {
            let rows = &flat[offset * hidden..(offset + s.len()) * hidden];
            offset += s.len();
            let mut v = Vec::with_capacity(self.info.dim);
            self.info.pooling.pool(rows, hidden, &mut v);
            if self.info.normalize {
                l2_normalize(&mut v);
            }
            out.push(v);
        }
        Ok(())
    }
}

/// Longest safetensors header read (the format's own limit).
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// Bytes the tensors of a safetensors file take once widened to f32, read
/// from its header alone: an 8-byte little-endian length, then JSON that
/// gives each tensor's dtype and shape (`__metadata__` aside).
pub(crate) fn f32_weight_bytes(path: &Path) -> Result<u64> {
    use std::io::Read as _;
    #[derive(serde::Deserialize)]
    struct TensorInfo {
        shape: Vec<u64>,
    }
    let io = |e: std::io::Error| EmbedError::load(path, e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| EmbedError::load(path, format!("no safetensors header: {e}")))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_SAFETENSORS_HEADER {
        return Err(EmbedError::load(
            path,
            format!("safetensors header of {len} bytes (at most {MAX_SAFETENSORS_HEADER})"),
        ));
    }
    let mut header = Vec::new();
    file.take(len).read_to_end(&mut header).map_err(io)?;
    if header.len() as u64 != len {
        return Err(EmbedError::load(path, "truncated safetensors header"));
    }
    let tensors: std::collections::HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header)
            .map_err(|e| EmbedError::load(path, format!("safetensors header: {e}")))?;
    let mut elements = 0u64;
    for (name, value) in tensors {
        if name == "__metadata__" {
            continue;
        }
        let t: TensorInfo = serde_json::from_value(value)
            .map_err(|e| EmbedError::load(path, format!("safetensors header, {name}: {e}")))?;
        let n = t
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .unwrap_or(u64::MAX);
        elements = elements.saturating_add(n);
    }
    Ok(elements.saturating_mul(4))
}

/// What a folder declares, read and checked before any weights.
struct Plan {
    spec: FolderSpec,
    config: BertConfig,
    /// The folder's `max_seq_length`, capped by the position table.
    max_seq_length: usize,
}

impl Plan {
    fn read(dir: &Path) -> Result<Plan> {
        let spec = FolderSpec::read(dir)?;
        let config = BertConfig::read(&spec.transformer_dir.join("config.json"))?;
        let max_seq_length = spec
            .max_seq_length
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);
        if let Some(d) = spec.word_embedding_dimension
            && d != config.hidden_size
        {
            return Err(EmbedError::load(
                dir,
                format!(
                    "pooling word_embedding_dimension {d} differs from hidden_size {}",
                    config.hidden_size
                ),
            ));
        }
        Ok(Plan {
            spec,
            config,
            max_seq_length,
        })
    }
}

/// Scales `v` to unit length (sentence-transformers clamps the norm at 1e-12).
pub(crate) fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    for x in v.iter_mut() {
        *x /= norm;
    }
}

impl EmbeddingBackend for CandleBackend {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn tokenize(&self, text: &str, truncate: bool) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, truncate)
    }

    fn embed_ids(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        for s in seqs {
            if s.is_empty() || s.len() > self.info.max_seq_length {
                return Err(EmbedError::Inference(format!(
                    "sequence of {} tokens (must be 1..={})",
                    s.len(),
                    self.info.max_seq_length
                )));
            }
        }
        // Sort by length so equal lengths share attention calls; undo at the end.
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| seqs[i].len());
        let sorted: Vec<&[u32]> = order.iter().map(|&i| seqs[i]).collect();
        let mut pooled = Vec::with_capacity(seqs.len());
        let mut start = 0;
        while start < sorted.len() {
            let mut end = start;
            let mut tokens = 0;
            while end < sorted.len()
                && (end == start || tokens + sorted[end].len() <= MAX_TOKENS_PER_PASS)
            {
                tokens += sorted[end].len();
                end += 1;
            }
            self.pass(&sorted[start..end], &mut pooled)?;
            start = end;
        }
        let mut out = vec![Vec::new(); seqs.len()];
        for (v, &i) in pooled.into_iter().zip(&order) {
            out[i] = v;
        }
        Ok(out)
    }

    fn memory_bytes(&self) -> u64 {
        self.bytes
    }

    fn forward_passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }
}
