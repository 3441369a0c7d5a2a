//! A BERT encoder on candle with padding-free ("varlen") attention.
//!
//! The sequences of a batch are packed one after another into a single
//! `(total_tokens, hidden)` matrix: every linear layer is one large matrix product
//! with no padding rows at all, and attention runs per group of equal-length
//! sequences, so no work is spent on padding and no attention mask is needed.
//! The result is the same as a padded forward with an attention mask.

use crate::error::{EmbedError, Result};
use crate::folder::read_json;
use crate::kernels::{Activation, AddNorm, BiasAct};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use std::path::Path;

/// The fields of a Hugging Face BERT `config.json` that the forward pass uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the token vectors.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Feed-forward activation: `gelu` (erf), `gelu_new` / `gelu_pytorch_tanh`, or `relu`.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Rows of the position-embedding table: the longest input the model takes.
    pub max_position_embeddings: usize,
    /// Rows of the token-type table.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// Layer-norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// `bert` (other families are refused).
    #[serde(default)]
    pub model_type: Option<String>,
    /// Only `absolute` is supported.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_act() -> String {
    "gelu".to_string()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl BertConfig {
    /// Reads and checks `config.json`.
    pub fn read(path: &Path) -> Result<BertConfig> {
        let c: BertConfig = read_json(path)?;
        if let Some(t) = c.model_type.as_deref()
            && t != "bert"
        {
            return Err(EmbedError::Unsupported(format!(
                "model_type '{t}' (only BERT-family 'bert' folders are supported)"
            )));
        }
        if let Some(p) = c.position_embedding_type.as_deref()
            && p != "absolute"
        {
            return Err(EmbedError::Unsupported(format!(
                "position_embedding_type '{p}'"
            )));
        }
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(EmbedError::load(
                path,
                "hidden_size must be a multiple of num_attention_heads",
            ));
        }
        parse_activation(&c.hidden_act)?;
        Ok(c)
    }
}

fn parse_activation(s: &str) -> Result<Activation> {
    match s {
        "gelu" => Ok(Activation::GeluErf),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
        "relu" => Ok(Activation::Relu),
        other => Err(EmbedError::Unsupported(format!("hidden_act '{other}'"))),
    }
}

/// A linear layer `y = act(x W^T + b)`. `W^T` is stored contiguous `(in, out)`,
/// which makes the matrix product's packing of the right-hand side cheaper; bias
/// and activation run fused after the product.
struct Linear {
    weight_t: Tensor,
    bias_act: BiasAct,
}

impl Linear {
    fn new(weight: &Tensor, bias: &Tensor, act: Activation) -> Result<Linear> {
        Ok(Linear {
            weight_t: weight.t()?.contiguous()?,
            bias_act: BiasAct {
                bias: bias.to_vec1::<f32>()?,
                act,
            },
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight_t)?.apply_op1_no_bwd(&self.bias_act)
    }
}

/// A product whose bias goes into the following [`AddNorm`].
struct Projection {
    weight_t: Tensor,
    add_norm: AddNorm,
}

impl Projection {
    /// `LayerNorm(x W^T + b + residual)`.
    fn forward(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight_t)?
            .apply_op2_no_bwd(residual, &self.add_norm)
    }
}

struct Layer {
    /// Query, key and value projections fused into one `(hidden, 3 hidden)` product;
    /// the query part is pre-scaled by 1/sqrt(head_dim).
    qkv: Linear,
    /// Attention output projection, residual and layer norm.
    attn_out: Projection,
    /// Feed-forward input with its activation.
    ff_in: Linear,
    /// Feed-forward output, residual and layer norm.
    ff_out: Projection,
}

/// BERT weights in memory (f32) and the forward pass.
pub struct Bert {
    config: BertConfig,
    word: Tensor,
    /// Position embeddings with the token-type-0 row already added (single-segment
    /// inputs always use type 0).
    position: Tensor,
    emb_norm: AddNorm,
    layers: Vec<Layer>,
    bytes: u64,
}

/// Upper bound on the attention-score elements computed at once for one group.
const ATTENTION_SCORES_MAX: usize = 4 << 20;

/// Weight-name prefixes seen in sentence-transformers and transformers checkpoints.
const PREFIXES: &[&str] = &["", "bert.", "model.", "0.auto_model."];

impl Bert {
    /// Loads `model.safetensors` (memory-mapped, then copied to f32 tensors so the
    /// map is released before this returns).
    pub fn load(config: BertConfig, weights: &Path) -> Result<Bert> {
        let act = parse_activation(&config.hidden_act)?;
        // SAFETY: the file is mapped read-only and only read while `st` lives, inside
        // this function; every tensor is copied into owned memory before the map is
        // dropped. A concurrent writer truncating the file could fault the process,
        // which is the usual caveat of every memory-mapped model loader.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(weights) }
            .map_err(|e| EmbedError::load(weights, e))?;
        let names: std::collections::HashSet<String> =
            st.tensors().into_iter().map(|(n, _)| n).collect();
        let prefix = PREFIXES
            .iter()
            .find(|p| names.contains(&format!("{p}embeddings.word_embeddings.weight")))
            .ok_or_else(|| {
                EmbedError::load(weights, "no 'embeddings.word_embeddings.weight' tensor")
            })?;
        let bytes = std::cell::Cell::new(0u64);
        let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let full = format!("{prefix}{name}");
            // Old checkpoints name layer-norm parameters gamma/beta.
            let full = if names.contains(&full) {
                full
            } else {
                full.replace("LayerNorm.weight", "LayerNorm.gamma")
                    .replace("LayerNorm.bias", "LayerNorm.beta")
            };
            let t = st
                .load(&full, &Device::Cpu)
                .map_err(|e| EmbedError::load(weights, format!("{full}: {e}")))?
                .to_dtype(DType::F32)?
                .contiguous()?;
            if t.dims() != shape {
                return Err(EmbedError::load(
                    weights,
                    format!("{full} has shape {:?}, config says {shape:?}", t.dims()),
                ));
            }
            bytes.set(bytes.get() + (t.elem_count() * 4) as u64);
            Ok(t)
        };
        let h = config.hidden_size;
        let eps = config.layer_norm_eps as f32;
        let word = get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let position = get(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, h],
        )?;
        let types = get(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
        )?;
        let position = position.broadcast_add(&types.narrow(0, 0, 1)?)?;
        let norm = |name: &str, bias: Option<Vec<f32>>| -> Result<AddNorm> {
            Ok(AddNorm {
                bias,
                gamma: get(&format!("{name}.weight"), &[h])?.to_vec1::<f32>()?,
                beta: get(&format!("{name}.bias"), &[h])?.to_vec1::<f32>()?,
                eps,
            })
        };
        let emb_norm = norm("embeddings.LayerNorm", None)?;
        let scale = 1.0 / ((h / config.num_attention_heads) as f64).sqrt();
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}.");
            let wb = |name: &str, out: usize, inp: usize| -> Result<(Tensor, Tensor)> {
                Ok((
                    get(&format!("{p}{name}.weight"), &[out, inp])?,
                    get(&format!("{p}{name}.bias"), &[out])?,
                ))
            };
            let (qw, qb) = wb("attention.self.query", h, h)?;
            let (kw, kb) = wb("attention.self.key", h, h)?;
            let (vw, vb) = wb("attention.self.value", h, h)?;
            let qkv = Linear::new(
                &Tensor::cat(&[&(qw * scale)?, &kw, &vw], 0)?,
                &Tensor::cat(&[&(qb * scale)?, &kb, &vb], 0)?,
                Activation::Identity,
            )?;
            let (ow, ob) = wb("attention.output.dense", h, h)?;
            let (iw, ib) = wb("intermediate.dense", config.intermediate_size, h)?;
            let ff_in = Linear::new(&iw, &ib, act)?;
            let (fw, fb) = wb("output.dense", h, config.intermediate_size)?;
            let attn_out = Projection {
                weight_t: ow.t()?.contiguous()?,
                add_norm: norm(
                    &format!("{p}attention.output.LayerNorm"),
                    Some(ob.to_vec1::<f32>()?),
                )?,
            };
            let ff_out = Projection {
                weight_t: fw.t()?.contiguous()?,
                add_norm: norm(&format!("{p}output.LayerNorm"), Some(fb.to_vec1::<f32>()?))?,
            };
            layers.push(Layer {
                qkv,
                attn_out,
                ff_in,
                ff_out,
            });
        }
        Ok(Bert {
            config,
            word,
            position,
            emb_norm,
            layers,
            bytes: bytes.get(),
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Bytes of weights held in memory.
    pub fn weight_bytes(&self) -> u64 {
        self.bytes
    }

    /// Runs the encoder over `seqs` (token ids, special tokens included, each at most
    /// `max_position_embeddings` long and non-empty) and returns the last hidden states
    /// packed as `(sum of lengths, hidden)`, in the order of `seqs`.
    ///
    /// Sequences of equal length that are adjacent share one attention call, so callers
    /// should pass them sorted by length.
    pub fn forward(&self, seqs: &[&[u32]]) -> Result<Tensor> {
        let h = self.config.hidden_size;
        let heads = self.config.num_attention_heads;
        let head_dim = h / heads;
        let total: usize = seqs.iter().map(|s| s.len()).sum();
        let mut ids = Vec::with_capacity(total);
        let mut pos = Vec::with_capacity(total);
        for s in seqs {
            if s.is_empty() || s.len() > self.config.max_position_embeddings {
                return Err(EmbedError::Inference(format!(
                    "sequence of {} tokens (must be 1..={})",
                    s.len(),
                    self.config.max_position_embeddings
                )));
            }
            for (i, &id) in s.iter().enumerate() {
                if id as usize >= self.config.vocab_size {
                    return Err(EmbedError::Inference(format!("token id {id} out of range")));
                }
                ids.push(id);
                pos.push(i as u32);
            }
        }
        // Runs of adjacent equal-length sequences: (start token, count, length).
        // A group's attention scores (count x heads x len x len floats) are kept under
        // ATTENTION_SCORES_MAX so long inputs do not allocate huge temporaries.
        let mut groups: Vec<(usize, usize, usize)> = Vec::new();
        let mut start = 0;
        for s in seqs {
            let len = s.len();
            match groups.last_mut() {
                Some(g) if g.2 == len && (g.1 + 1) * heads * len * len <= ATTENTION_SCORES_MAX => {
                    g.1 += 1
                }
                _ => groups.push((start, 1, len)),
            }
            start += len;
        }

        let ids = Tensor::from_vec(ids, total, &Device::Cpu)?;
        let pos = Tensor::from_vec(pos, total, &Device::Cpu)?;
        let mut x = self
            .word
            .index_select(&ids, 0)?
            .apply_op2_no_bwd(&self.position.index_select(&pos, 0)?, &self.emb_norm)?;

        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            let q = qkv.narrow(1, 0, h)?.contiguous()?;
            let k = qkv.narrow(1, h, h)?.contiguous()?;
            let v = qkv.narrow(1, 2 * h, h)?.contiguous()?;
            let mut ctx = Vec::with_capacity(groups.len());
            for &(start, n, len) in &groups {
                let split = |t: &Tensor| -> candle_core::Result<Tensor> {
                    t.narrow(0, start, n * len)?
                        .reshape((n, len, heads, head_dim))?
                        .transpose(1, 2)?
                        .contiguous()
                };
                let (qg, kg, vg) = (split(&q)?, split(&k)?, split(&v)?);
                let scores = qg.matmul(&kg.t()?)?;
                let probs = candle_nn::ops::softmax_last_dim(&scores)?;
                let out = probs.matmul(&vg)?.transpose(1, 2)?.reshape((n * len, h))?;
                ctx.push(out);
            }
            let ctx = if ctx.len() == 1 {
                ctx.swap_remove(0)
            } else {
                Tensor::cat(&ctx, 0)?
            };
            let x1 = layer.attn_out.forward(&ctx, &x)?;
            let ff = layer.ff_in.forward(&x1)?;
            x = layer.ff_out.forward(&ff, &x1)?;
        }
        Ok(x)
    }
}
