//! The registry's estimate of a model's memory before its first load: the
//! weights widened to f32, as the model holds them, not their file size.

use crate::common;
use crate::tiny::{self, Tiny};
use candle_core::{DType, Device};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uat_config::{EmbeddingModelConfig, EmbeddingsConfig};
use uat_embed::{CandleBackend, EmbeddingBackend, Loader, ModelInfo, Registry};

const MIB: u64 = 1 << 20;

/// Rewrites the folder's `model.safetensors` with every tensor in f16.
fn to_f16(dir: &Path) {
    let path = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let halves: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(k, t)| (k, t.to_dtype(DType::F16).unwrap()))
        .collect();
    candle_core::safetensors::save(&halves, &path).unwrap();
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// Regression: the estimate was the file sizes, so an f16 model (widened to
/// f32 at load) took twice the memory it was given room for. The estimate now
/// counts the tensors of the file's header at 4 bytes each.
#[test]
fn an_f16_folder_is_estimated_at_its_f32_size() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny::write(dir.path(), Tiny::default());
    to_f16(dir.path());
    let elements: u64 = weights.values().map(|(_, v)| v.len() as u64).sum();
    let tokenizer = file_len(&dir.path().join("tokenizer.json"));
    let estimate = CandleBackend::check(dir.path()).unwrap();
    assert_eq!(estimate, elements * 4 + tokenizer);
    // The estimate is not below what the loaded model holds.
    let loaded = CandleBackend::load(dir.path()).unwrap();
    assert!(
        loaded.memory_bytes() <= estimate,
        "holds {} bytes, estimated {estimate}",
        loaded.memory_bytes()
    );
    // A weights file that is no safetensors is refused by the check.
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"\x05\0\0\0\0\0\0\0{nope",
    )
    .unwrap();
    assert!(matches!(
        CandleBackend::check(dir.path()),
        Err(uat_embed::EmbedError::ModelLoad { .. })
    ));
}

/// Writes `dir/model.safetensors` holding one f16 tensor of `n` elements
/// (zeros), by hand: an 8-byte length, the JSON header, the data.
fn write_f16(dir: &Path, n: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let header = format!(
        r#"{{"__metadata__":{{"format":"pt"}},"w":{{"dtype":"F16","shape":[{n}],"data_offsets":[0,{}]}}}}"#,
        n * 2
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + (n * 2) as usize, 0);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
}

/// A model that holds `bytes` and counts the instances alive.
struct Held {
    info: ModelInfo,
    bytes: u64,
    live: Arc<AtomicI64>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl EmbeddingBackend for Held {
    common::byte_tokens!(info);
    fn embed_ids(&self, seqs: &[&[u32]]) -> uat_embed::Result<Vec<Vec<f32>>> {
        common::lengths(seqs)
    }
    fn memory_bytes(&self) -> u64 {
        self.bytes
    }
    fn forward_passes(&self) -> u64 {
        0
    }
}

/// Regression: with the file size as the estimate, the budget seemed to hold
/// model a (4 MiB) and the 2 MiB f16 file of model b together, so b was
/// loaded (to 4 MiB in f32) beside a, over the budget of 7 MiB, and a went
/// only afterwards. Now a is unloaded before b's loader runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_is_made_for_an_f16_model_at_its_f32_size_before_it_loads() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    write_f16(&a, 2 * MIB / 2);
    write_f16(&b, 2 * MIB / 2);
    let model = |name: &str, path: &Path| EmbeddingModelConfig {
        name: name.to_string(),
        path: path.to_path_buf(),
        eager: false,
        token_ids: Default::default(),
    };
    let cfg = EmbeddingsConfig {
        models: vec![model("a", &a), model("b", &b)],
        memory_budget: 7 * MIB,
        max_wait: Duration::ZERO,
        ..EmbeddingsConfig::default()
    };
    let live = Arc::new(AtomicI64::new(0));
    // Models alive when each load started, by folder name.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let loader: Loader = {
        let (live, seen) = (Arc::clone(&live), Arc::clone(&seen));
        Arc::new(move |p: &Path| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            seen.lock()
                .unwrap()
                .push((name, live.load(Ordering::SeqCst)));
            live.fetch_add(1, Ordering::SeqCst);
            Ok(Arc::new(Held {
                info: common::byte_info(64),
                // f16 widened to f32: twice the 2 MiB file.
                bytes: 4 * MIB,
                live: Arc::clone(&live),
            }) as Arc<dyn EmbeddingBackend>)
        })
    };
    let r = Registry::with_loader(&cfg, loader)
        .unwrap()
        .with_budget_wait(Duration::from_secs(10));
    r.load("a").await.unwrap();
    r.load("b").await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![("a".to_string(), 0), ("b".to_string(), 0)],
        "(model, models alive when its loader ran)"
    );
    assert!(!r.status_of("a").unwrap().loaded);
    assert!(r.status_of("b").unwrap().loaded);
    assert_eq!(r.loaded_bytes(), 4 * MIB);
}
