//! Crash safety of the memory service: SIGKILL a `uat serve` process in the
//! middle of a stream of acknowledged writes, restart it on the same data
//! folder, and find every acknowledged memory by id and by keyword search.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

/// Starts `uat serve` on port 0 in `dir`; returns it and its base URL.
fn start(dir: &std::path::Path) -> (Child, String) {
    let cfg = dir.join("uat.toml");
    std::fs::write(&cfg, "[routing]\nprobe_local = false\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_uat"))
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.join("data"))
        // Warnings, and the line that gives the bound address.
        .env("RUST_LOG", "warn,uat=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start uat");
    let (addr, _log) = common::listening_addr(&mut child, Duration::from_secs(60));
    (child, format!("http://{addr}"))
}

async fn wait_healthy(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{base}/health")).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "uat did not become healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_survives_sigkill_during_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let (mut child, base) = start(dir.path());
    wait_healthy(&client, &base).await;

    // Four writers, single memories and batches of 10, each memory with a
    // unique token; only 2xx answers count as acknowledged.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, base, acked) = (client.clone(), base.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                let token = |k: usize| format!("tok{w}x{n}x{k}");
                let body = if n % 2 == 0 {
                    json!({"user_id": "crash", "content": format!("crash test memory {}", token(0))})
                } else {
                    json!({"memories": (0..10).map(|k| json!({"user_id": "crash", "content": format!("crash test memory {}", token(k))})).collect::<Vec<_>>()})
                };
                let Ok(resp) = client.post(format!("{base}/v1/memories")).json(&body).send().await else { return };
                if !resp.status().is_success() {
                    return;
                }
                let Ok(v) = resp.json::<Value>().await else { return };
                let items: Vec<Value> = match v.get("memories") {
                    Some(Value::Array(list)) => list.clone(),
                    _ => vec![v],
                };
                let mut a = acked.lock().unwrap();
                for it in items {
                    let content = it["content"].as_str().unwrap().to_string();
                    let token = content.rsplit(' ').next().unwrap().to_string();
                    a.push((it["id"].as_str().unwrap().to_string(), token));
                }
            }
        }));
    }
    // Let the stream run, then kill -9 in the middle of it.
    let t0 = Instant::now();
    while acked.lock().unwrap().len() < 300 && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 100,
        "only {} writes were acknowledged before the kill",
        acked.len()
    );

    let (mut child, base) = start(dir.path());
    wait_healthy(&client, &base).await;
    let mut missing_by_id = Vec::new();
    let mut missing_by_search = Vec::new();
    for (id, token) in &acked {
        let r = client
            .get(format!("{base}/v1/memories/{id}?user_id=crash"))
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            missing_by_id.push(id.clone());
        }
        let r: Value = client
            .post(format!("{base}/v1/memories/search"))
            .json(&json!({"user_id": "crash", "query": token, "mode": "keyword", "top_k": 5}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let found = r["results"]
            .as_array()
            .is_some_and(|l| l.iter().any(|m| m["id"].as_str() == Some(id)));
        if !found {
            missing_by_search.push(token.clone());
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "{} acknowledged writes checked after SIGKILL + restart",
        acked.len()
    );
    assert!(missing_by_id.is_empty(), "lost by id: {missing_by_id:?}");
    assert!(
        missing_by_search.is_empty(),
        "lost by search: {missing_by_search:?}"
    );
}
