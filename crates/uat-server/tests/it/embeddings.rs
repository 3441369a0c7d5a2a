//! `POST /v1/embeddings` with the real all-MiniLM-L6-v2 (fetched by
//! scripts/fetch-model.sh; `UAT_TEST_MODEL_DIR` points at it), and the model
//! registry's admin routes.

use crate::common::{TestApp, spawn_config, test_config};
use base64::Engine as _;
use serde_json::{Value, json};
use std::time::Duration;

/// The model folder, or `None` outside CI when it is not there (said loudly).
fn model_dir() -> Option<String> {
    match std::env::var("UAT_TEST_MODEL_DIR") {
        Ok(d) if !d.is_empty() => Some(d),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "UAT_TEST_MODEL_DIR must be set in CI (scripts/test.sh sets it)"
            );
            eprintln!(
                "SKIPPED: UAT_TEST_MODEL_DIR is not set; run scripts/test.sh to fetch the model"
            );
            None
        }
    }
}

async fn app_with_model(dir: &str) -> TestApp {
    let tmp = tempfile::tempdir().unwrap();
    let toml = format!("[[embeddings.models]]\nname = \"minilm\"\npath = \"{dir}\"\n");
    let cfg = test_config(&toml, tmp.path());
    spawn_config(cfg, tmp).await
}

/// An eager model unloaded after `keep_alive` idle leaves `/ready` ready:
/// only an eager model that never loaded makes the replica degraded. Before,
/// every quiet replica turned degraded `keep_alive` after its start.
#[tokio::test]
async fn an_eager_model_unloaded_for_idleness_leaves_the_replica_ready() {
    let Some(dir) = model_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let toml = format!(
        "[embeddings]\nkeep_alive = \"200ms\"\n[[embeddings.models]]\nname = \"minilm\"\npath = \"{dir}\"\neager = true\n"
    );
    let app = spawn_config(test_config(&toml, tmp.path()), tmp).await;
    let mut unloaded = false;
    for _ in 0..50 {
        let models = app.get_json("/v1/embeddings/models").await;
        if !models.to_string().contains("\"loaded\":true") {
            unloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(unloaded, "the eager model was unloaded after keep_alive");
    let (check, ready) = app.ready_check("embeddings").await;
    assert_eq!(check["status"], "ok", "{ready}");
}

async fn embed(app: &TestApp, body: Value) -> (u16, Value) {
    let r = app
        .client
        .post(app.at("/v1/embeddings"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap())
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[tokio::test]
async fn local_embeddings_match_the_reference_and_base64_decodes_to_floats() {
    let Some(dir) = model_dir() else { return };
    let app = app_with_model(&dir).await;
    let fixtures = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/embeddings"
    );
    let refs: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{fixtures}/reference_embeddings.json")).unwrap(),
    )
    .unwrap();
    let texts: Vec<Value> = refs["sentences"].as_array().unwrap()[..4].to_vec();
    let (s, b) = embed(&app, json!({"model": "minilm", "input": texts})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["object"], "list");
    assert_eq!(b["data"].as_array().unwrap().len(), 4);
    assert!(b["usage"]["prompt_tokens"].as_u64().unwrap() > 4);
    let ref_rows = refs["embeddings"].as_array().expect("reference rows");
    for i in 0..4 {
        let got = floats(&b["data"][i]["embedding"]);
        assert_eq!(got.len(), 384);
        let want = floats(&ref_rows[i]);
        assert!(cosine(&got, &want) > 0.999, "row {i}");
    }

    let (s, b64) = embed(
        &app,
        json!({"model": "minilm", "input": texts[0], "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(s, 200, "{b64}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, floats(&b["data"][0]["embedding"]));

    // Local models are listed with the chat models.
    let models: Value = app
        .client
        .get(app.at("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "minilm"),
        "{models}"
    );
}

/// A local model's answer is not a router answer: the cache reads and checks
/// its body itself, stores it, and replays it byte for byte.
#[tokio::test]
async fn local_embeddings_are_cached_and_replayed_byte_exact() {
    let Some(dir) = model_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let toml = format!(
        "[[embeddings.models]]\nname = \"minilm\"\npath = \"{dir}\"\n[cache]\nmode = \"deterministic\"\n"
    );
    let app = spawn_config(test_config(&toml, tmp.path()), tmp).await;
    let send = || async {
        let r = app
            .client
            .post(app.at("/v1/embeddings"))
            .json(&json!({"model": "minilm", "input": ["the sea", "a fact"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let cache = r.headers()["x-uat-cache"].to_str().unwrap().to_string();
        (cache, r.bytes().await.unwrap())
    };
    let (first, miss) = send().await;
    assert_eq!(first, "miss");
    let v: Value = serde_json::from_slice(&miss).unwrap();
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2), "{v}");
    let (second, hit) = send().await;
    assert_eq!(second, "hit-l1");
    assert_eq!(hit, miss, "the hit is the stored answer, byte for byte");
    // The hit is counted as the cache's, not as local inference.
    let metrics = app.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("uat_requests_total{") && l.contains("provider=\"cache\"")),
        "{metrics}"
    );
}

#[tokio::test]
async fn every_bad_embeddings_request_is_a_400_naming_the_field() {
    let Some(dir) = model_dir() else { return };
    let app = app_with_model(&dir).await;
    let cases = [
        (json!({"model": "minilm", "input": []}), "input"),
        (json!({"model": "minilm", "input": ["ok", 3]}), "input"),
        (
            json!({"model": "minilm", "input": vec!["x"; 2049]}),
            "input",
        ),
        (
            json!({"model": "minilm", "input": "hi", "dimensions": 128}),
            "dimensions",
        ),
        (
            json!({"model": "minilm", "input": "hi", "encoding_format": "int8"}),
            "encoding_format",
        ),
        (json!({"model": "minilm"}), "input"),
        (json!({"input": "hi"}), "model"),
        (
            json!({"model": "minilm", "input": "word ".repeat(400), "truncate": false}),
            "input",
        ),
    ];
    for (body, param) in cases {
        let (s, b) = embed(&app, body.clone()).await;
        assert_eq!(s, 400, "{body} -> {b}");
        assert_eq!(b["error"]["param"], param, "{body} -> {b}");
        assert_eq!(b["error"]["type"], "invalid_request_error");
    }
    let (s, b) = embed(
        &app,
        json!({"model": "minilm", "input": "word ".repeat(400), "truncate": false}),
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        b["error"]["message"].as_str().unwrap().contains("256"),
        "{b}"
    );
    // Truncated by default, like sentence-transformers.
    let (s, b) = embed(
        &app,
        json!({"model": "minilm", "input": "word ".repeat(400)}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = embed(&app, json!({"model": "nope", "input": "hi"})).await;
    assert_eq!(s, 404, "{b}");
    assert_eq!(b["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn registry_admin_routes_load_unload_and_list() {
    let Some(dir) = model_dir() else { return };
    let app = app_with_model(&dir).await;
    let list: Value = app
        .client
        .get(app.at("/v1/embeddings/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["name"], "minilm");
    // (The memory service may have loaded it already to learn its dimension.)
    let r = app
        .client
        .post(app.at("/v1/embeddings/models/minilm/unload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list: Value = app
        .client
        .get(app.at("/v1/embeddings/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["loaded"], false);

    let r = app
        .client
        .post(app.at("/v1/embeddings/models/minilm/load"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list: Value = app
        .client
        .get(app.at("/v1/embeddings/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["loaded"], true);
    assert!(list["data"][0]["memory_bytes"].as_u64().unwrap() > 1_000_000);

    let r = app
        .client
        .post(app.at("/v1/embeddings/models/minilm/unload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list: Value = app
        .client
        .get(app.at("/v1/embeddings/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["loaded"], false);

    // Used again: loads lazily.
    let (s, b) = embed(&app, json!({"model": "minilm", "input": "hello"})).await;
    assert_eq!(s, 200, "{b}");
    let r = app
        .client
        .post(app.at("/v1/embeddings/models/nope/load"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// Token ids were fed to BERT as its own vocabulary ids: `[[15339, 1917]]`,
/// "hello world" in tiktoken's cl100k_base as LangChain's `OpenAIEmbeddings`
/// sends it, came out at cosine 0.13 to the text's embedding.
#[tokio::test]
async fn cl100k_token_ids_embed_like_their_text() {
    let Some(dir) = model_dir() else { return };
    let app = app_with_model(&dir).await;
    let (s, text) = embed(&app, json!({"model": "minilm", "input": "hello world"})).await;
    assert_eq!(s, 200, "{text}");
    let (s, ids) = embed(&app, json!({"model": "minilm", "input": [[15339, 1917]]})).await;
    assert_eq!(s, 200, "{ids}");
    let c = cosine(
        &floats(&ids["data"][0]["embedding"]),
        &floats(&text["data"][0]["embedding"]),
    );
    assert!(c > 0.99, "cosine {c}");
    assert_eq!(
        ids["usage"], text["usage"],
        "usage counts the model's tokens"
    );
    // One flat list is one input too.
    let (s, flat) = embed(&app, json!({"model": "minilm", "input": [15339, 1917]})).await;
    assert_eq!(s, 200, "{flat}");
    assert_eq!(flat["data"][0]["embedding"], ids["data"][0]["embedding"]);
    // An id that is no cl100k_base token: a 400 naming the input and the id.
    for bad in [json!([[15339, 100256]]), json!([[15339], [200000]])] {
        let (s, b) = embed(&app, json!({"model": "minilm", "input": bad})).await;
        assert_eq!(s, 400, "{b}");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["param"], "input");
        let msg = b["error"]["message"].as_str().unwrap();
        assert!(msg.contains("input[") && msg.contains("token id"), "{msg}");
    }
}

/// `token_ids = "model"` keeps the model's own vocabulary ids.
#[tokio::test]
async fn token_ids_model_feeds_the_model_vocabulary_ids() {
    let Some(dir) = model_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let toml = format!(
        "[[embeddings.models]]\nname = \"minilm\"\npath = \"{dir}\"\ntoken_ids = \"model\"\n"
    );
    let app = spawn_config(test_config(&toml, tmp.path()), tmp).await;
    let (s, text) = embed(&app, json!({"model": "minilm", "input": "hello world"})).await;
    assert_eq!(s, 200, "{text}");
    // [CLS] hello world [SEP] in the BERT vocabulary.
    let (s, ids) = embed(
        &app,
        json!({"model": "minilm", "input": [[101, 7592, 2088, 102]]}),
    )
    .await;
    assert_eq!(s, 200, "{ids}");
    let c = cosine(
        &floats(&ids["data"][0]["embedding"]),
        &floats(&text["data"][0]["embedding"]),
    );
    assert!(c > 0.999, "cosine {c}");
    // Past the model's vocabulary of 30522.
    let (s, b) = embed(&app, json!({"model": "minilm", "input": [[30522]]})).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["param"], "input");
}

/// Floats were widened to f64 before printing (`-0.03447728604078293` for
/// `-0.034477286`): 1.78 times the bytes, in answers and cache entries.
#[tokio::test]
async fn float_embeddings_print_each_f32_in_its_shortest_form() {
    let Some(dir) = model_dir() else { return };
    let app = app_with_model(&dir).await;
    let r = app
        .client
        .post(app.at("/v1/embeddings"))
        .json(&json!({"model": "minilm", "input": ["the sea", "a fact"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let text = r.text().await.unwrap();
    let start = text.find("\"embedding\":[").unwrap() + "\"embedding\":[".len();
    let end = start + text[start..].find(']').unwrap();
    let tokens: Vec<&str> = text[start..end].split(',').collect();
    assert_eq!(tokens.len(), 384);
    for t in tokens {
        let x: f32 = t.parse().unwrap();
        assert_eq!(t, serde_json::to_string(&x).unwrap(), "in {}", &text[..200]);
        assert!(t.trim_start_matches('-').len() <= 15, "{t}");
    }
    // Otherwise the shape is what it was: keys, order, usage.
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(
        text.starts_with("{\"data\":[{\"embedding\":["),
        "{}",
        &text[..40]
    );
    assert!(
        text.ends_with(
            &format!(
                ",\"index\":1,\"object\":\"embedding\"}}],\"model\":\"minilm\",\"object\":\"list\",\"usage\":{{\"prompt_tokens\":{0},\"total_tokens\":{0}}}}}",
                v["usage"]["prompt_tokens"]
            )
        ),
        "{}",
        &text[text.len() - 160..]
    );
    // A large answer (rendered on the blocking pool) reads the same.
    let many: Vec<String> = (0..64).map(|i| format!("sentence number {i}")).collect();
    let (s, b) = embed(&app, json!({"model": "minilm", "input": many})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"].as_array().unwrap().len(), 64);
    assert_eq!(b["data"][63]["index"], 63);
    let (s, one) = embed(
        &app,
        json!({"model": "minilm", "input": "sentence number 63"}),
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        cosine(
            &floats(&b["data"][63]["embedding"]),
            &floats(&one["data"][0]["embedding"])
        ) > 0.9999
    );
}

/// `input: ""` and `["", "a"]` answered 200 with the embedding of
/// `[CLS][SEP]`; OpenAI answers 400.
#[tokio::test]
async fn an_empty_string_input_is_a_400_naming_it() {
    let Some(dir) = model_dir() else { return };
    let app = app_with_model(&dir).await;
    for (input, named) in [
        (json!(""), "'input'"),
        (json!(["", "a"]), "'input[0]'"),
        (json!(["a", ""]), "'input[1]'"),
    ] {
        let (s, b) = embed(&app, json!({"model": "minilm", "input": input})).await;
        assert_eq!(s, 400, "{input} -> {b}");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["param"], "input");
        let msg = b["error"]["message"].as_str().unwrap();
        assert!(msg.contains(named), "{msg}");
    }
}

/// `GET /v1/embeddings/models` showed every key the server's model folders.
#[tokio::test]
async fn the_model_listing_shows_no_server_path() {
    let Some(dir) = model_dir() else { return };
    let app = app_with_model(&dir).await;
    let text = app
        .client
        .get(app.at("/v1/embeddings/models"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["data"][0]["name"], "minilm", "{list}");
    assert!(list["data"][0].get("loaded").is_some(), "{list}");
    assert!(list["data"][0].get("path").is_none(), "{list}");
    assert!(!text.contains(&dir), "{text}");
}

/// A cached answer to token ids is keyed by how the model reads them: an
/// entry stored while `token_ids = "model"` (or before token ids were read
/// as cl100k_base, as every release before did) is never served once they
/// mean cl100k_base. Three gateways (replicas) share one L2 (Redis): the
/// first stores, the second (same reading) proves the entry is there, the
/// third misses.
#[tokio::test]
async fn cached_token_id_embeddings_are_keyed_by_the_models_reading() {
    let Some(dir) = model_dir() else { return };
    let redis =
        std::env::var("UAT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let prefix = uuid::Uuid::new_v4().simple().to_string();
    let toml = |mode: &str| {
        format!(
            "[[embeddings.models]]\nname = \"minilm\"\npath = \"{dir}\"\ntoken_ids = \"{mode}\"\n[cache]\nmode = \"deterministic\"\n[cache.l2]\nurl = \"{redis}\"\nkey_prefix = \"uat-test:{prefix}:\"\n[cache.l3]\nenabled = false\n"
        )
    };
    let app = |mode: &'static str| {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = test_config(&toml(mode), tmp.path());
        spawn_config(cfg, tmp)
    };
    let body = json!({"model": "minilm", "input": [[7592, 2088]]});
    // `no-store`: a miss of the reader's (before the write reached L3)
    // must not fill its own L1, or it would never read L3.
    let send = |app: &TestApp, store: bool| {
        let cc = if store { "max-age=60" } else { "no-store" };
        let req = app
            .client
            .post(app.at("/v1/embeddings"))
            .header("cache-control", cc)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.headers()["x-uat-cache"].to_str().unwrap().to_string()
        }
    };
    let writer = app("model").await;
    assert_eq!(send(&writer, true).await, "miss");
    let reader = app("model").await;
    let mut seen = String::new();
    for _ in 0..100 {
        seen = send(&reader, false).await;
        if seen == "hit-l2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, "hit-l2", "the entry reached L2");
    let other = app("cl100k_base").await;
    assert_eq!(
        send(&other, false).await,
        "miss",
        "another reading of the ids"
    );
}
