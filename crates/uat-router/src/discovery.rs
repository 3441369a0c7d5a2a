//! Finding providers when none is configured: the usual local servers on
//! 127.0.0.1 are probed with a short timeout and whichever answer are kept.

use crate::provider::Provider;
use std::time::Duration;
use uat_config::{ProviderConfig, ProviderKind};

/// How long a local probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// The usual local servers: Ollama :11434, LM Studio :1234, llama.cpp :8080, vLLM :8000.
pub fn local_candidates() -> Vec<ProviderConfig> {
    [
        ("ollama", ProviderKind::Ollama, "http://127.0.0.1:11434"),
        ("lmstudio", ProviderKind::Openai, "http://127.0.0.1:1234/v1"),
        ("llamacpp", ProviderKind::Openai, "http://127.0.0.1:8080/v1"),
        ("vllm", ProviderKind::Openai, "http://127.0.0.1:8000/v1"),
    ]
    .into_iter()
    .map(|(name, kind, url)| {
        let mut p = ProviderConfig::new(name, kind, Some(url.to_owned()));
        p.connect_timeout = PROBE_TIMEOUT;
        p
    })
    .collect()
}

/// Probes `candidates` concurrently (listing their models) and returns those
/// that answered. Never fails: none answering gives an empty list.
pub async fn probe_local(candidates: &[ProviderConfig]) -> Vec<ProviderConfig> {
    let probes = candidates.iter().map(|c| async move {
        let mut probe_cfg = c.clone();
        probe_cfg.first_byte_timeout = PROBE_TIMEOUT;
        probe_cfg.timeout = PROBE_TIMEOUT;
        let provider: Box<dyn Provider> = match c.kind {
            ProviderKind::Ollama => {
                Box::new(crate::provider::ollama::Ollama::new(&probe_cfg).ok()?)
            }
            ProviderKind::Openai => {
                Box::new(crate::provider::openai::OpenAi::new(&probe_cfg).ok()?)
            }
            _ => return None,
        };
        match tokio::time::timeout(PROBE_TIMEOUT, provider.list_models()).await {
            Ok(Ok(models)) => {
                tracing::info!(provider = %c.name, models = models.len(), "found a local provider");
                Some(c.clone())
            }
            _ => None,
        }
    });
    let found: Vec<ProviderConfig> = futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect();
    if found.is_empty() {
        tracing::info!("no provider configured and none found on the usual local ports");
    }
    found
}
