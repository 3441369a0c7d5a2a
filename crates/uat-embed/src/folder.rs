//! Reading a sentence-transformers folder (Hugging Face layout): which modules it
//! declares, where the transformer lives, how it pools and whether it normalizes.

use crate::error::{EmbedError, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// How token vectors become one sentence vector (`1_Pooling/config.json`).
///
/// sentence-transformers concatenates the enabled modes in this order:
/// CLS, max, mean, mean/sqrt(len); so does [`Pooling::output_dim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pooling {
    /// The first token's vector.
    pub cls: bool,
    /// Element-wise maximum over the tokens.
    pub max: bool,
    /// Mean over the tokens (attention mask).
    pub mean: bool,
    /// Sum over the tokens divided by sqrt(token count).
    pub mean_sqrt_len: bool,
}

impl Pooling {
    /// Mean pooling only (the sentence-transformers default).
    pub const MEAN: Pooling = Pooling {
        cls: false,
        max: false,
        mean: true,
        mean_sqrt_len: false,
    };
    /// CLS pooling only.
    pub const CLS: Pooling = Pooling {
        cls: true,
        max: false,
        mean: false,
        mean_sqrt_len: false,
    };

    fn modes(&self) -> usize {
        [self.cls, self.max, self.mean, self.mean_sqrt_len]
            .iter()
            .filter(|m| **m)
            .count()
    }

    /// Width of the pooled vector for token vectors of width `hidden`.
    pub fn output_dim(&self, hidden: usize) -> usize {
        self.modes() * hidden
    }

    /// Pools `rows` (one sequence, `len` x `hidden`, row-major) into `out`.
    pub fn pool(&self, rows: &[f32], hidden: usize, out: &mut Vec<f32>) {
        let len = rows.len() / hidden.max(1);
        if self.cls {
            out.extend_from_slice(&rows[..hidden.min(rows.len())]);
        }
        if self.max {
            let mut m = vec![f32::NEG_INFINITY; hidden];
            for row in rows.chunks_exact(hidden) {
                for (a, b) in m.iter_mut().zip(row) {
                    *a = a.max(*b);
                }
            }
            out.extend_from_slice(&m);
        }
        if self.mean || self.mean_sqrt_len {
            let mut sum = vec![0f32; hidden];
            for row in rows.chunks_exact(hidden) {
                for (a, b) in sum.iter_mut().zip(row) {
                    *a += *b;
                }
            }
            // sentence-transformers clamps the token count at 1e-9.
            let n = (len as f32).max(1e-9);
            if self.mean {
                out.extend(sum.iter().map(|s| s / n));
            }
            if self.mean_sqrt_len {
                let r = n.sqrt();
                out.extend(sum.iter().map(|s| s / r));
            }
        }
    }
}

/// What a sentence-transformers folder declares.
#[derive(Debug, Clone)]
pub struct FolderSpec {
    /// Folder of the transformer module (config.json, tokenizer.json, model.safetensors).
    pub transformer_dir: PathBuf,
    /// Pooling modes.
    pub pooling: Pooling,
    /// Whether a `Normalize` module follows (L2 normalization).
    pub normalize: bool,
    /// `word_embedding_dimension` from the pooling config, checked against the model.
    pub word_embedding_dimension: Option<usize>,
    /// `max_seq_length` from `sentence_bert_config.json`, if given.
    pub max_seq_length: Option<usize>,
    /// `do_lower_case` from `sentence_bert_config.json`.
    pub do_lower_case: bool,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// `1_Pooling/config.json`: the arguments of sentence-transformers' `Pooling`,
/// with its defaults (mean pooling unless said otherwise).
#[derive(Deserialize)]
#[serde(default)]
struct PoolingFile {
    word_embedding_dimension: Option<usize>,
    pooling_mode_cls_token: bool,
    pooling_mode_mean_tokens: bool,
    pooling_mode_max_tokens: bool,
    pooling_mode_mean_sqrt_len_tokens: bool,
    pooling_mode_weightedmean_tokens: bool,
    pooling_mode_lasttoken: bool,
    pooling_mode: Option<String>,
}

impl Default for PoolingFile {
    fn default() -> Self {
        PoolingFile {
            word_embedding_dimension: None,
            pooling_mode_cls_token: false,
            // `Pooling(pooling_mode_mean_tokens=True)` in sentence-transformers.
            pooling_mode_mean_tokens: true,
            pooling_mode_max_tokens: false,
            pooling_mode_mean_sqrt_len_tokens: false,
            pooling_mode_weightedmean_tokens: false,
            pooling_mode_lasttoken: false,
            pooling_mode: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SbertFile {
    max_seq_length: Option<usize>,
    do_lower_case: bool,
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| EmbedError::load(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| EmbedError::load(path, e))
}

impl FolderSpec {
    /// Checks, without loading the weights, that `dir` is a folder a model
    /// can be loaded from (`uat config check`): its sentence-transformers
    /// files read ([`FolderSpec::read`]), the transformer's `config.json`
    /// read and supported ([`crate::BertConfig::read`]), `tokenizer.json`
    /// present, and `model.safetensors`' header read. The tokenizer and
    /// the tensors themselves are only read by a load.
    pub fn check(dir: &Path) -> Result<FolderSpec> {
        if !dir.is_dir() {
            return Err(EmbedError::load(dir, "no such folder"));
        }
        let spec = FolderSpec::read(dir)?;
        for f in ["config.json", "tokenizer.json", "model.safetensors"] {
            let path = spec.transformer_dir.join(f);
            if !path.is_file() {
                return Err(EmbedError::load(&path, "missing"));
            }
        }
        crate::BertConfig::read(&spec.transformer_dir.join("config.json"))?;
        crate::backend::f32_weight_bytes(&spec.transformer_dir.join("model.safetensors"))?;
        Ok(spec)
    }

    /// Reads `modules.json`, the pooling config and `sentence_bert_config.json`.
    pub fn read(dir: &Path) -> Result<FolderSpec> {
        let modules: Vec<ModuleEntry> = read_json(&dir.join("modules.json"))?;
        let mut transformer_dir = None;
        let mut pooling = None;
        let mut normalize = false;
        for m in &modules {
            let kind = m.kind.rsplit('.').next().unwrap_or(m.kind.as_str());
            match kind {
                "Transformer" => transformer_dir = Some(dir.join(&m.path)),
                "Pooling" => {
                    if transformer_dir.is_none() {
                        return Err(EmbedError::load(dir, "Pooling module before Transformer"));
                    }
                    pooling = Some(read_pooling(&dir.join(&m.path).join("config.json"))?);
                }
                "Normalize" => normalize = true,
                other => {
                    return Err(EmbedError::Unsupported(format!(
                        "sentence-transformers module type '{other}' in {}",
                        dir.display()
                    )));
                }
            }
        }
        let transformer_dir = transformer_dir
            .ok_or_else(|| EmbedError::load(dir, "modules.json declares no Transformer module"))?;
        let pooling = pooling
            .ok_or_else(|| EmbedError::load(dir, "modules.json declares no Pooling module"))?;
        let sbert_path = transformer_dir.join("sentence_bert_config.json");
        let sbert: SbertFile = if sbert_path.exists() {
            read_json(&sbert_path)?
        } else {
            SbertFile::default()
        };
        Ok(FolderSpec {
            transformer_dir,
            pooling: pooling.0,
            normalize,
            word_embedding_dimension: pooling.1,
            max_seq_length: sbert.max_seq_length,
            do_lower_case: sbert.do_lower_case,
        })
    }
}

/// Returns the pooling modes and the declared word-embedding dimension, read
/// as sentence-transformers' `Pooling(**config)` reads them: a `pooling_mode`
/// string (any case) replaces every `pooling_mode_*` flag; without it the
/// flags count, `pooling_mode_mean_tokens` being on unless set to false.
fn read_pooling(path: &Path) -> Result<(Pooling, Option<usize>)> {
    let mut f: PoolingFile = read_json(path)?;
    if let Some(mode) = f.pooling_mode.take() {
        let mode = mode.to_lowercase();
        f.pooling_mode_cls_token = mode == "cls";
        f.pooling_mode_max_tokens = mode == "max";
        f.pooling_mode_mean_tokens = mode == "mean";
        f.pooling_mode_mean_sqrt_len_tokens = mode == "mean_sqrt_len_tokens";
        f.pooling_mode_weightedmean_tokens = mode == "weightedmean";
        f.pooling_mode_lasttoken = mode == "lasttoken";
        if !matches!(
            mode.as_str(),
            "cls" | "max" | "mean" | "mean_sqrt_len_tokens" | "weightedmean" | "lasttoken"
        ) {
            return Err(EmbedError::Unsupported(format!("pooling mode '{mode}'")));
        }
    }
    if f.pooling_mode_weightedmean_tokens || f.pooling_mode_lasttoken {
        return Err(EmbedError::Unsupported(
            "weighted-mean and last-token pooling".to_string(),
        ));
    }
    let p = Pooling {
        cls: f.pooling_mode_cls_token,
        max: f.pooling_mode_max_tokens,
        mean: f.pooling_mode_mean_tokens,
        mean_sqrt_len: f.pooling_mode_mean_sqrt_len_tokens,
    };
    if p.modes() == 0 {
        return Err(EmbedError::load(path, "no pooling mode is enabled"));
    }
    Ok((p, f.word_embedding_dimension))
}
