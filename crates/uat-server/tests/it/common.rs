//! Shared helpers: start the whole app in-process on an ephemeral port with
//! a given configuration, and small HTTP helpers.

#![allow(
    dead_code,
    reason = "shared helpers: not every test module uses every one"
)]

use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::oneshot;
use uat_server::{AppState, Config};
use uat_testkit::{FakeUpstream, Wire};

/// A running app. Stops when dropped.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// A plain client (no automatic gzip).
    pub client: reqwest::Client,
    /// The app state (router, services).
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestApp {
    /// Shuts the server down; true when `serve` returned within `within`.
    pub async fn stop(mut self, within: Duration) -> bool {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(server) => tokio::time::timeout(within, server).await.is_ok(),
            None => true,
        }
    }

    /// `url + path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.at("/metrics"))
            .send()
            .await
            .expect("request failed")
            .text()
            .await
            .expect("metrics text")
    }

    /// GETs `path` and parses its JSON body.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.client
            .get(self.at(path))
            .send()
            .await
            .expect("request failed")
            .json()
            .await
            .expect("a JSON body")
    }

    /// The `/ready` check named `name`, and the whole report (for messages).
    pub async fn ready_check(&self, name: &str) -> (serde_json::Value, serde_json::Value) {
        let ready = self.get_json("/ready").await;
        let check = ready["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no check {name}: {ready}"));
        (check, ready)
    }

    /// POSTs JSON to `/v1/chat/completions`.
    pub async fn chat(&self, body: serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.at("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .expect("request failed")
    }

    /// POSTs JSON to `path`.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.at(path))
            .json(body)
            .send()
            .await
            .expect("request failed")
    }
}

/// Parses TOML into a config with test-friendly defaults for whatever the
/// TOML does not set: no local probing, hourly discovery, 1-20 ms backoff,
/// cache off, data in a temporary directory.
pub fn test_config(toml: &str, dir: &std::path::Path) -> Config {
    let mut cfg = Config::from_toml(toml).expect("invalid test config");
    if !toml.contains("probe_local") {
        cfg.routing.probe_local = false;
    }
    if !toml.contains("discovery_interval") {
        cfg.routing.discovery_interval = Duration::from_secs(3600);
    }
    if !toml.contains("backoff_base") {
        cfg.routing.backoff_base = Duration::from_millis(1);
    }
    if !toml.contains("backoff_max") {
        cfg.routing.backoff_max = Duration::from_millis(20);
    }
    if !toml.contains("shutdown_grace") {
        cfg.server.shutdown_grace = Duration::from_secs(1);
    }
    if !toml.contains("[cache") {
        cfg.cache.mode = uat_config::CacheMode::Off;
    }
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.storage.data_dir = dir.to_path_buf();
    cfg.storage.database_url = Some(format!("sqlite://{}/uat.db", dir.display()));
    cfg
}

/// Starts the app with this TOML (see [`test_config`]).
pub async fn spawn_app(toml: &str) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = test_config(toml, dir.path());
    spawn_config(cfg, dir).await
}

/// Starts the app with a ready-made config.
pub async fn spawn_config(cfg: Config, dir: tempfile::TempDir) -> TestApp {
    let opts = uat_server::ServeOptions::from(&cfg.server);
    let listener = uat_server::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let state = uat_server::build(cfg).await.expect("build");
    let app = uat_server::app(state.clone());
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(uat_server::serve(
        listener,
        app,
        async move {
            let _ = rx.await;
        },
        opts,
    ));
    let client = reqwest::Client::builder()
        .no_gzip()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    TestApp {
        url: format!("http://{addr}"),
        addr,
        client,
        state,
        shutdown: Some(tx),
        server: Some(server),
        _dir: dir,
    }
}

/// `tag` and 12 random hex digits: a name no other test (or run) uses.
pub fn unique(tag: &str) -> String {
    format!("{tag}{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A provider entry for a fake upstream.
pub fn provider_toml(name: &str, kind: &str, base_url: &str, extra: &str) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"{kind}\"\nbase_url = \"{base_url}\"\n{extra}\n"
    )
}

/// An `[[auth.keys]]` entry named `name` for the secret `secret` (given
/// by its SHA-256), with `extra` lines.
pub fn key_toml(name: &str, secret: &str, extra: &str) -> String {
    let sha: String = uat_config::key_digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("[[auth.keys]]\nname = \"{name}\"\nkey_sha256 = \"{sha}\"\n{extra}\n")
}

/// A simple chat body.
pub fn chat_body(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": stream,
    })
}

/// Reads an SSE body into its `data:` payloads.
pub async fn sse_events(resp: reqwest::Response) -> Vec<String> {
    let text = resp.text().await.expect("body");
    parse_sse(&text)
}

/// Splits SSE text into `data:` payloads.
pub fn parse_sse(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// Concatenates the content deltas of SSE chunks.
pub fn stream_text(events: &[String]) -> String {
    let mut s = String::new();
    for e in events {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(e)
            && let Some(t) = v
                .pointer("/choices/0/delta/content")
                .and_then(|c| c.as_str())
        {
            s.push_str(t);
        }
    }
    s
}

/// A header as a string ("" when missing).
pub fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// A local address that refuses connections for as long as the returned
/// socket lives: bound, so no other test's listener can be given its port,
/// but not listening. (A listener bound and dropped freed its port for the
/// next `bind(0)` of a test running beside it: a "dead" provider then
/// answered as that test's fake upstream.)
pub fn closed_port() -> (String, tokio::net::TcpSocket) {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = sock.local_addr().expect("addr");
    (format!("http://{addr}"), sock)
}

/// Polls `f` until it is true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `[routing]` with a strategy and extra lines.
pub fn routing(strategy: &str, extra: &str) -> String {
    format!("[routing]\nstrategy = \"{strategy}\"\n{extra}\n")
}

/// Two OpenAI fakes `a` and `b` that both serve `shared`.
pub async fn two_fakes() -> (FakeUpstream, FakeUpstream) {
    let a = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    let b = FakeUpstream::start(Wire::OpenAi, "b").await.unwrap();
    a.set_models(&["shared"]);
    b.set_models(&["shared"]);
    (a, b)
}

/// Provider entries for [`two_fakes`].
pub fn two_providers(a: &FakeUpstream, b: &FakeUpstream, a_extra: &str, b_extra: &str) -> String {
    format!(
        "{}{}",
        provider_toml("a", "openai", &a.base_url(), a_extra),
        provider_toml("b", "openai", &b.base_url(), b_extra)
    )
}

/// Sends a non-streamed chat and returns the provider that served it.
pub async fn served_by(app: &TestApp, model: &str) -> String {
    let resp = app.chat(chat_body(model, false)).await;
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    header(&resp, "x-uat-provider")
}
