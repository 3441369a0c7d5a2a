//! A tiny BERT with random weights, written by the test itself as a full
//! sentence-transformers folder, and a naive f64 reference forward pass written
//! from the BERT definition (no candle), to check the backend's pooling variants.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use uat_embed::{CandleBackend, EmbeddingBackend, Pooling};

pub const VOCAB: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "the", "cat", "dog", "sat",
    "on", "mat", "a", "##s", ".", ",", "!", "big", "small", "red", "blue", "run", "##ning",
];
pub const HIDDEN: usize = 8;
pub const HEADS: usize = 2;
pub const LAYERS: usize = 2;
pub const INTER: usize = 16;
pub const MAX_POS: usize = 32;
/// sentence-transformers' `max_seq_length` of the tiny folder; its tokenizer.json
/// says truncate at 4 and pad to 16, both of which must be ignored.
pub const MAX_SEQ: usize = 12;

/// How to write the tiny folder.
#[derive(Clone, Copy)]
pub struct Tiny {
    pub pooling: Pooling,
    pub normalize: bool,
    pub seed: u64,
    /// Weight names carry a `bert.` prefix (transformers checkpoints).
    pub prefixed: bool,
}

impl Default for Tiny {
    fn default() -> Self {
        Tiny {
            pooling: Pooling::MEAN,
            normalize: true,
            seed: 7,
            prefixed: false,
        }
    }
}

pub type Weights = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Writes the folder and returns the weights it holds.
pub fn write(dir: &Path, t: Tiny) -> Weights {
    let mut rng = StdRng::seed_from_u64(t.seed);
    let mut w: Weights = HashMap::new();
    let mut rand = |name: &str, shape: &[usize], center: f32, spread: f32| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| center + spread * rng.random_range(-1.0f32..1.0))
            .collect();
        w.insert(name.to_string(), (shape.to_vec(), v));
    };
    let v = VOCAB.len();
    rand("embeddings.word_embeddings.weight", &[v, HIDDEN], 0.0, 1.0);
    rand(
        "embeddings.position_embeddings.weight",
        &[MAX_POS, HIDDEN],
        0.0,
        0.5,
    );
    rand(
        "embeddings.token_type_embeddings.weight",
        &[2, HIDDEN],
        0.0,
        0.5,
    );
    rand("embeddings.LayerNorm.weight", &[HIDDEN], 1.0, 0.2);
    rand("embeddings.LayerNorm.bias", &[HIDDEN], 0.0, 0.2);
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}.");
        for (name, out, inp) in [
            ("attention.self.query", HIDDEN, HIDDEN),
            ("attention.self.key", HIDDEN, HIDDEN),
            ("attention.self.value", HIDDEN, HIDDEN),
            ("attention.output.dense", HIDDEN, HIDDEN),
            ("intermediate.dense", INTER, HIDDEN),
            ("output.dense", HIDDEN, INTER),
        ] {
            rand(&format!("{p}{name}.weight"), &[out, inp], 0.0, 0.6);
            rand(&format!("{p}{name}.bias"), &[out], 0.0, 0.2);
        }
        for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
            rand(&format!("{p}{name}.weight"), &[HIDDEN], 1.0, 0.2);
            rand(&format!("{p}{name}.bias"), &[HIDDEN], 0.0, 0.2);
        }
    }
    let prefix = if t.prefixed { "bert." } else { "" };
    let tensors: HashMap<String, Tensor> = w
        .iter()
        .map(|(k, (shape, data))| {
            (
                format!("{prefix}{k}"),
                Tensor::from_vec(data.clone(), shape.as_slice(), &Device::Cpu).unwrap(),
            )
        })
        .collect();
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let write_json = |name: &str, v: serde_json::Value| {
        std::fs::write(dir.join(name), serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    };
    write_json(
        "config.json",
        json!({
            "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
            "hidden_size": HIDDEN, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
            "intermediate_size": INTER, "max_position_embeddings": MAX_POS,
            "type_vocab_size": 2, "vocab_size": v, "layer_norm_eps": 1e-12,
            "position_embedding_type": "absolute", "pad_token_id": 0
        }),
    );
    let mut modules = vec![
        json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
        json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
    ];
    if t.normalize {
        modules.push(json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
    }
    write_json("modules.json", json!(modules));
    write_json(
        "1_Pooling/config.json",
        json!({
            "word_embedding_dimension": HIDDEN,
            "pooling_mode_cls_token": t.pooling.cls,
            "pooling_mode_mean_tokens": t.pooling.mean,
            "pooling_mode_max_tokens": t.pooling.max,
            "pooling_mode_mean_sqrt_len_tokens": t.pooling.mean_sqrt_len
        }),
    );
    write_json(
        "sentence_bert_config.json",
        json!({"max_seq_length": MAX_SEQ, "do_lower_case": false}),
    );
    write_json("tokenizer.json", tokenizer_json());
    w
}

fn tokenizer_json() -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = VOCAB
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    let special = |id: usize| {
        json!({"id": id, "content": VOCAB[id], "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 16}, "direction": "Right", "pad_to_multiple_of": null,
                    "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": [special(0), special(1), special(2), special(3), special(4)],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
            }
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    })
}

/// A tiny folder in a fresh temp dir, loaded.
pub fn load(t: Tiny) -> (tempfile::TempDir, Weights, CandleBackend) {
    let dir = tempfile::tempdir().unwrap();
    let w = write(dir.path(), t);
    let b = CandleBackend::load(dir.path()).unwrap();
    (dir, w, b)
}

// ---- the naive reference -------------------------------------------------------

fn erf(x: f64) -> f64 {
    // Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7).
    let s = x.signum();
    let x = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-x * x).exp();
    s * y
}

fn param<'a>(w: &'a Weights, name: &str) -> &'a [f32] {
    &w.get(name).unwrap_or_else(|| panic!("missing {name}")).1
}

/// `x` (rows x in) times `W^T` (W: out x in) plus `b`.
fn linear(x: &[Vec<f64>], w: &Weights, name: &str) -> Vec<Vec<f64>> {
    let (shape, wt) = w.get(&format!("{name}.weight")).unwrap();
    let (out, inp) = (shape[0], shape[1]);
    let b = param(w, &format!("{name}.bias"));
    x.iter()
        .map(|row| {
            (0..out)
                .map(|o| {
                    b[o] as f64
                        + (0..inp)
                            .map(|i| row[i] * wt[o * inp + i] as f64)
                            .sum::<f64>()
                })
                .collect()
        })
        .collect()
}

fn layer_norm(x: &[Vec<f64>], w: &Weights, name: &str) -> Vec<Vec<f64>> {
    let g = param(w, &format!("{name}.weight"));
    let b = param(w, &format!("{name}.bias"));
    x.iter()
        .map(|row| {
            let n = row.len() as f64;
            let mean = row.iter().sum::<f64>() / n;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            row.iter()
                .enumerate()
                .map(|(i, v)| (v - mean) / (var + 1e-12).sqrt() * g[i] as f64 + b[i] as f64)
                .collect()
        })
        .collect()
}

fn add(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<Vec<f64>> {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p + q).collect())
        .collect()
}

/// Last hidden states of one sequence, straight from the BERT definition.
pub fn reference_hidden(w: &Weights, ids: &[u32]) -> Vec<Vec<f64>> {
    let word = param(w, "embeddings.word_embeddings.weight");
    let pos = param(w, "embeddings.position_embeddings.weight");
    let typ = param(w, "embeddings.token_type_embeddings.weight");
    let x: Vec<Vec<f64>> = ids
        .iter()
        .enumerate()
        .map(|(t, &id)| {
            (0..HIDDEN)
                .map(|h| {
                    word[id as usize * HIDDEN + h] as f64
                        + pos[t * HIDDEN + h] as f64
                        + typ[h] as f64
                })
                .collect()
        })
        .collect();
    let mut x = layer_norm(&x, w, "embeddings.LayerNorm");
    let dh = HIDDEN / HEADS;
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}.");
        let q = linear(&x, w, &format!("{p}attention.self.query"));
        let k = linear(&x, w, &format!("{p}attention.self.key"));
        let v = linear(&x, w, &format!("{p}attention.self.value"));
        let n = x.len();
        let mut ctx = vec![vec![0.0; HIDDEN]; n];
        for h in 0..HEADS {
            for i in 0..n {
                let scores: Vec<f64> = (0..n)
                    .map(|j| {
                        (0..dh)
                            .map(|d| q[i][h * dh + d] * k[j][h * dh + d])
                            .sum::<f64>()
                            / (dh as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..dh {
                    ctx[i][h * dh + d] = (0..n).map(|j| e[j] / z * v[j][h * dh + d]).sum();
                }
            }
        }
        let attn = linear(&ctx, w, &format!("{p}attention.output.dense"));
        let x1 = layer_norm(
            &add(&attn, &x),
            w,
            &format!("{p}attention.output.LayerNorm"),
        );
        let inter: Vec<Vec<f64>> = linear(&x1, w, &format!("{p}intermediate.dense"))
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|v| 0.5 * v * (1.0 + erf(v / 2f64.sqrt())))
                    .collect()
            })
            .collect();
        let out = linear(&inter, w, &format!("{p}output.dense"));
        x = layer_norm(&add(&out, &x1), w, &format!("{p}output.LayerNorm"));
    }
    x
}

/// The sentence vector by hand: pooling, then optional L2 normalization.
pub fn reference_embedding(w: &Weights, ids: &[u32], t: Tiny) -> Vec<f64> {
    let hs = reference_hidden(w, ids);
    let mut out = Vec::new();
    if t.pooling.cls {
        out.extend_from_slice(&hs[0]);
    }
    if t.pooling.mean {
        out.extend((0..HIDDEN).map(|h| hs.iter().map(|r| r[h]).sum::<f64>() / hs.len() as f64));
    }
    if t.normalize {
        let n = out.iter().map(|v| v * v).sum::<f64>().sqrt();
        out.iter_mut().for_each(|v| *v /= n);
    }
    out
}

pub const SENTENCES: &[&str] = &[
    "hello world",
    "the cat sat on the mat.",
    "a big red dog!",
    "cats running",
    "hello",
    "the small blue cat sat on a red mat, the big dog sat on the blue mat!",
    "",
    "zebra",
];

fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

fn check_against_reference(t: Tiny) {
    let (_dir, w, b) = load(t);
    let got = b.embed_texts(SENTENCES).unwrap();
    for (s, g) in SENTENCES.iter().zip(&got) {
        let ids = b.tokenize(s, true).unwrap();
        let want = reference_embedding(&w, &ids, t);
        let d = max_diff(g, &want);
        assert!(d < 1e-4, "{s:?}: max |diff| {d} (got {g:?}, want {want:?})");
        let alone = b.embed_texts(&[s]).unwrap().remove(0);
        let d = max_diff(&alone, &want);
        assert!(d < 1e-4, "{s:?} alone: max |diff| {d}");
    }
}

#[test]
fn tiny_tokenizer_ignores_file_padding_and_truncation() {
    let (_dir, _w, b) = load(Tiny::default());
    // [CLS] hello world [SEP]: no padding to 16.
    assert_eq!(b.tokenize("Hello World", true).unwrap(), vec![2, 5, 6, 3]);
    // Subwords and unknown words.
    assert_eq!(
        b.tokenize("cats zebra", true).unwrap(),
        vec![2, 8, 14, 1, 3]
    );
    // Truncated at max_seq_length (12), not at the file's 4, keeping [SEP].
    let long = b.tokenize(SENTENCES[5], true).unwrap();
    assert_eq!(long.len(), MAX_SEQ);
    assert_eq!(long[0], 2);
    assert_eq!(long[MAX_SEQ - 1], 3);
    assert!(matches!(
        b.tokenize(SENTENCES[5], false),
        Err(uat_embed::EmbedError::InputTooLong {
            limit: MAX_SEQ,
            tokens: 21,
            ..
        })
    ));
    assert_eq!(b.info().max_seq_length, MAX_SEQ);
}

#[test]
fn mean_pooling_matches_hand_computed_reference() {
    check_against_reference(Tiny::default());
}

#[test]
fn cls_pooling_matches_hand_computed_reference() {
    check_against_reference(Tiny {
        pooling: Pooling::CLS,
        seed: 11,
        ..Tiny::default()
    });
}

#[test]
fn unnormalized_mean_with_prefixed_weight_names_matches_reference() {
    let t = Tiny {
        normalize: false,
        prefixed: true,
        seed: 3,
        ..Tiny::default()
    };
    check_against_reference(t);
    let (_dir, _w, b) = load(t);
    let v = b.embed_texts(&["hello world"]).unwrap().remove(0);
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "not normalized, norm {norm}");
}

#[test]
fn cls_and_mean_pooling_differ() {
    let (_d1, _w1, mean) = load(Tiny::default());
    let (_d2, _w2, cls) = load(Tiny {
        pooling: Pooling::CLS,
        ..Tiny::default()
    });
    let a = mean
        .embed_texts(&["the cat sat on the mat."])
        .unwrap()
        .remove(0);
    let b = cls
        .embed_texts(&["the cat sat on the mat."])
        .unwrap()
        .remove(0);
    let d: f32 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum();
    assert!(d > 1e-3, "same weights, different pooling must differ");
}

#[test]
fn batch_order_and_grouping_do_not_change_results() {
    let (_dir, _w, b) = load(Tiny::default());
    let fwd = b.embed_texts(SENTENCES).unwrap();
    let rev: Vec<&str> = SENTENCES.iter().rev().copied().collect();
    let mut back = b.embed_texts(&rev).unwrap();
    back.reverse();
    for (x, y) in fwd.iter().zip(&back) {
        assert_eq!(x, y);
    }
}

#[test]
fn unsupported_module_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), Tiny::default());
    std::fs::write(
        dir.path().join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
            {"idx":2,"name":"2","path":"2_Dense","type":"sentence_transformers.models.Dense"}]"#,
    )
    .unwrap();
    match CandleBackend::load(dir.path()) {
        Err(uat_embed::EmbedError::Unsupported(m)) => assert!(m.contains("Dense"), "{m}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("a Dense module must be refused"),
    }
}
