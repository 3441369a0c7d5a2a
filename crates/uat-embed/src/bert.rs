//! A BERT encoder on candle with padding-free ("varlen") attention.
//!
//! The sequences of a batch are packed one after another into a single
//! `(total_tokens, hidden)` matrix: every linear layer is one large matrix product
//! with no padding rows at all, and attention runs per group of equal-length
//! sequences, so no work is spent on padding and no attention mask is needed.
//! The result is the same as a padded forward with an attention mask.

use crate::error::{EmbedError, Result};
use crate::folder::read_json;
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
        if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
            return Err(EmbedError::load(
                path,
                "hidden_size must be a multiple of num_attention_heads",
            ));
        }
        Activation::parse(&c.hidden_act)?;
        Ok(c)
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(s: &str) -> Result<Activation> {
        match s {
            "gelu" => Ok(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => Err(EmbedError::Unsupported(format!("hidden_act '{other}'"))),
        }
    }

    #[inline(always)]
    fn f(self, x: f32) -> f32 {
        match self {
            Activation::GeluErf => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
            Activation::GeluTanh => {
                let c = (2.0 / std::f32::consts::PI).sqrt();
                0.5 * x * (1.0 + (c * (x + 0.044_715 * x * x * x)).tanh())
            }
            Activation::Relu => x.max(0.0),
        }
    }
}

/// erf without calls (Abramowitz & Stegun 7.1.28, |error| <= 3e-7), so the loop
/// over a row auto-vectorizes; libm's `erff` was a tenth of the forward pass.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let p = 1.0
        + a * (0.070_523_08
            + a * (0.042_282_01
                + a * (0.009_270_527 + a * (0.000_152_014_3 + a * (0.000_276_567_2 + a * 0.000_043_063_8)))));
    let p2 = p * p;
    let p4 = p2 * p2;
    let p8 = p4 * p4;
    let p16 = p8 * p8;
    (1.0 - 1.0 / p16).copysign(x)
}

/// `act(x + bias)` in one pass over a contiguous `(rows, n)` f32 matrix.
struct BiasAct {
    bias: Vec<f32>,
    act: Activation,
}

impl candle_core::CustomOp1 for BiasAct {
    fn name(&self) -> &'static str {
        "bias-activation"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("bias-activation needs a contiguous input".into()))?;
        let xs = &storage.as_slice::<f32>()?[start..end];
        let n = self.bias.len();
        let mut out = vec![0f32; xs.len()];
        let act = self.act;
        for (o_row, x_row) in out.chunks_exact_mut(n).zip(xs.chunks_exact(n)) {
            match act {
                Activation::GeluErf => {
                    for ((o, x), b) in o_row.iter_mut().zip(x_row).zip(&self.bias) {
                        *o = Activation::GeluErf.f(x + b);
                    }
                }
                _ => {
                    for ((o, x), b) in o_row.iter_mut().zip(x_row).zip(&self.bias) {
                        *o = act.f(x + b);
                    }
                }
            }
        }
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// A linear layer `y = x W^T + b`. `W^T` is stored contiguous `(in, out)`, which
/// makes the matrix product's packing of the right-hand side cheaper.
struct Linear {
    weight_t: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(weight: &Tensor, bias: Tensor) -> candle_core::Result<Linear> {
        Ok(Linear {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight_t)?.broadcast_add(&self.bias)
    }
}

struct LayerNorm {
    gamma: Tensor,
    beta: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.gamma, &self.beta, self.eps)
    }
}

struct Layer {
    /// Query, key and value projections fused into one `(3 hidden, hidden)` product.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    /// The feed-forward input weights `(hidden, intermediate)`; bias and activation
    /// are applied together by `ff_act`.
    ff_in_t: Tensor,
    ff_act: BiasAct,
    ff_out: Linear,
    ff_norm: LayerNorm,
}

/// BERT weights in memory (f32) and the forward pass.
pub struct Bert {
    config: BertConfig,
    word: Tensor,
    /// Position embeddings with the token-type-0 row already added (single-segment
    /// inputs always use type 0).
    position: Tensor,
    emb_norm: LayerNorm,
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
        let act = Activation::parse(&config.hidden_act)?;
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
        let mut bytes = 0u64;
        let mut get = |name: &str, shape: &[usize]| -> Result<Tensor> {
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
            bytes += (t.elem_count() * 4) as u64;
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
        let emb_norm = LayerNorm {
            gamma: get("embeddings.LayerNorm.weight", &[h])?,
            beta: get("embeddings.LayerNorm.bias", &[h])?,
            eps,
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}.");
            let mut wb = |name: &str, out: usize, inp: usize| -> Result<(Tensor, Tensor)> {
                Ok((
                    get(&format!("{p}{name}.weight"), &[out, inp])?,
                    get(&format!("{p}{name}.bias"), &[out])?,
                ))
            };
            let (qw, qb) = wb("attention.self.query", h, h)?;
            let (kw, kb) = wb("attention.self.key", h, h)?;
            let (vw, vb) = wb("attention.self.value", h, h)?;
            let qkv = Linear::new(
                &Tensor::cat(&[&qw, &kw, &vw], 0)?,
                Tensor::cat(&[&qb, &kb, &vb], 0)?,
            )?;
            let (ff_in_w, ff_in_b) = wb("intermediate.dense", config.intermediate_size, h)?;
            let ff_in_t = ff_in_w.t()?.contiguous()?;
            let ff_act = BiasAct {
                bias: ff_in_b.to_vec1::<f32>()?,
                act,
            };
            let mut lin = |name: &str, out: usize, inp: usize| -> Result<Linear> {
                let (w, b) = wb(name, out, inp)?;
                Ok(Linear::new(&w, b)?)
            };
            let attn_out = lin("attention.output.dense", h, h)?;
            let ff_out = lin("output.dense", h, config.intermediate_size)?;
            let mut norm = |name: &str| -> Result<LayerNorm> {
                Ok(LayerNorm {
                    gamma: get(&format!("{p}{name}.weight"), &[h])?,
                    beta: get(&format!("{p}{name}.bias"), &[h])?,
                    eps,
                })
            };
            let attn_norm = norm("attention.output.LayerNorm")?;
            let ff_norm = norm("output.LayerNorm")?;
            layers.push(Layer {
                qkv,
                attn_out,
                attn_norm,
                ff_in_t,
                ff_act,
                ff_out,
                ff_norm,
            });
        }
        Ok(Bert {
            config,
            word,
            position,
            emb_norm,
            layers,
            bytes,
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
        let x = (self.word.index_select(&ids, 0)? + self.position.index_select(&pos, 0)?)?;
        let mut x = self.emb_norm.forward(&x)?;
        let scale = 1.0 / (head_dim as f64).sqrt();

        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            let q = (qkv.narrow(1, 0, h)? * scale)?;
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
            let attn = layer.attn_out.forward(&ctx)?;
            let x1 = layer.attn_norm.forward(&(attn + &x)?)?;
            let ff = x1.matmul(&layer.ff_in_t)?.apply_op1_no_bwd(&layer.ff_act)?;
            let ff = layer.ff_out.forward(&ff)?;
            x = layer.ff_norm.forward(&(ff + &x1)?)?;
        }
        Ok(x)
    }
}
