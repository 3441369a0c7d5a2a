//! Gateway core: chat completions and model lists end to end (pass-through,
//! aliases, request errors, limits, gzip, discovery, embeddings forwarding,
//! metrics) against fake upstreams.

use crate::common::*;
use serde_json::{Value, json};
use std::time::Duration;
use uat_testkit::{Behavior, FakeUpstream, Wire};

#[tokio::test]
async fn chat_non_stream_and_stream_through_openai_and_mock() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    let toml = format!(
        "{}\n[[providers]]\nname = \"m\"\nkind = \"mock\"\n",
        provider_toml("a", "openai", &up.base_url(), "")
    );
    let app = spawn_app(&toml).await;

    let resp = app.chat(chat_body("a-model", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-provider"), "a");
    assert_eq!(header(&resp, "x-uat-attempts"), "1");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from a");
    assert_eq!(
        v["system_fingerprint"], "fp_fake",
        "upstream fields pass through"
    );

    let resp = app.chat(chat_body("a-model", true)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "text/event-stream");
    assert_eq!(header(&resp, "x-uat-provider"), "a");
    let events = sse_events(resp).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(stream_text(&events), "Hello from a");

    let resp = app.chat(chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-provider"), "m");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Mock reply to: Say hello"
    );

    let mut body = chat_body("mock-model", true);
    body["stream_options"] = json!({"include_usage": true});
    let events = sse_events(app.chat(body).await).await;
    assert_eq!(stream_text(&events), "Mock reply to: Say hello");
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn models_list_aggregates_dedups_and_includes_aliases() {
    let (a, b) = two_fakes().await;
    b.set_models(&["shared", "b-only"]);
    let toml = format!(
        "{}[[models]]\nname = \"fast-chat\"\ntargets = [\"a/shared\", \"b/b-only\"]\n",
        two_providers(&a, &b, "", "")
    );
    let app = spawn_app(&toml).await;
    let resp = app.client.get(app.at("/v1/models")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    // Remote models and aliases first (local embedding models may follow).
    assert_eq!(ids[..3], ["shared", "b-only", "fast-chat"]);
    let unique: std::collections::HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "deduplicated: {ids:?}");
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][2]["owned_by"], "uat-alias");
    // One model by id (the SDKs' models.retrieve), slashes and all.
    b.set_models(&["shared", "org/m2"]);
    let app = spawn_app(&two_providers(&a, &b, "", "")).await;
    for id in ["shared", "org/m2"] {
        let resp = app
            .client
            .get(app.at(&format!("/v1/models/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{id}");
        let m: Value = resp.json().await.unwrap();
        assert_eq!(
            (m["id"].as_str(), m["object"].as_str()),
            (Some(id), Some("model"))
        );
    }
    let resp = app
        .client
        .get(app.at("/v1/models/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn unknown_fields_pass_through_to_openai_upstreams() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    let app = spawn_app(&provider_toml("a", "openai", &up.base_url(), "")).await;
    let body = json!({
        "model": "a-model",
        "messages": [{"role": "user", "content": "hi", "name": "bob"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "stop": ["x", "y"],
        "n": 2,
        "seed": 42,
        "logit_bias": {"50256": -100},
        "x_vendor_extension": {"nested": [1, 2, 3]}
    });
    let resp = app.chat(body.clone()).await;
    assert_eq!(resp.status(), 200);
    let got = up.last_body().unwrap();
    assert_eq!(
        got, body,
        "the upstream receives exactly what the client sent"
    );
}

#[tokio::test]
async fn alias_resolves_to_its_targets_and_explicit_provider_syntax_works() {
    let (a, b) = two_fakes().await;
    let toml = format!(
        "{}{}[[models]]\nname = \"fast-chat\"\ntargets = [\"b/renamed-upstream\", \"a/shared\"]\n",
        two_providers(&a, &b, "priority = 5", "priority = 1"),
        routing("priority", "")
    );
    let app = spawn_app(&toml).await;
    let resp = app.chat(chat_body("fast-chat", false)).await;
    assert_eq!(header(&resp, "x-uat-provider"), "b");
    assert_eq!(
        b.last_body().unwrap()["model"],
        "renamed-upstream",
        "alias target's model name is sent"
    );
    b.set_default(Behavior::Status(500));
    let resp = app.chat(chat_body("fast-chat", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "x-uat-provider"),
        "a",
        "fails over to the alias's other target"
    );
    assert_eq!(a.last_body().unwrap()["model"], "shared");
    let resp = app.chat(chat_body("a/anything", false)).await;
    assert_eq!(header(&resp, "x-uat-provider"), "a");
    assert_eq!(a.last_body().unwrap()["model"], "anything");
}

#[tokio::test]
async fn request_errors_have_the_openai_shape_and_status() {
    let app = spawn_app("[[providers]]\nname = \"m\"\nkind = \"mock\"\n").await;
    let post = |body: &'static str| {
        app.client
            .post(app.at("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let resp = post("{not json").await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(header(&resp, "x-uat-attempts"), "0");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );

    let v: Value = post(r#"{"messages": [{"role": "user", "content": "x"}]}"#)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["error"]["param"], "model");

    let resp = post(r#"{"model": "mock-model"}"#).await.unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["param"], "messages");

    let resp = post(r#"{"model": "mock-model", "messages": [{"role": 5}]}"#)
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["param"], "messages[0].role");

    let resp = post(r#"{"model": "mock-model", "messages": []}"#)
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let resp = post(r#"[1, 2]"#).await.unwrap();
    assert_eq!(resp.status(), 400);

    let resp = post(r#"{"model": "nope", "messages": [{"role": "user", "content": "x"}]}"#)
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["param"], "model");

    let resp = app
        .client
        .get(app.at("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let app =
        spawn_app("[server]\nbody_limit = 2048\n[[providers]]\nname = \"m\"\nkind = \"mock\"\n")
            .await;
    let big = "x".repeat(4096);
    let resp = app
        .chat(json!({"model": "mock-model", "messages": [{"role": "user", "content": big}]}))
        .await;
    assert_eq!(resp.status(), 413);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large");
    let resp = app.chat(chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 200, "small bodies still pass");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

async fn post_encoded(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    encoding: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    app.client
        .request(method, app.at(path))
        .header("content-type", "application/json")
        .header("content-encoding", encoding)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn chat_encoded(app: &TestApp, encoding: &str, body: Vec<u8>) -> reqwest::Response {
    post_encoded(
        app,
        reqwest::Method::POST,
        "/v1/chat/completions",
        encoding,
        body,
    )
    .await
}

/// A body sent compressed (`Content-Encoding: gzip` or `deflate`, any
/// case) is decoded, on the gateway's own reader (chat) and on the JSON
/// extractor of the other routes (a vector collection here). Before, the
/// header was ignored and the compressed bytes parsed as JSON (400).
#[tokio::test]
async fn a_gzip_or_deflate_request_body_is_decoded() {
    let app = spawn_app("[[providers]]\nname = \"m\"\nkind = \"mock\"\n").await;
    let chat = serde_json::to_vec(&chat_body("mock-model", false)).unwrap();
    for (encoding, body) in [
        ("gzip", gzip(&chat)),
        ("GZIP", gzip(&chat)),
        ("x-gzip", gzip(&chat)),
        ("deflate", zlib(&chat)),
        ("identity", chat.clone()),
    ] {
        let resp = chat_encoded(&app, encoding, body).await;
        assert_eq!(resp.status(), 200, "{encoding}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"], "Mock reply to: Say hello",
            "{encoding}"
        );
    }
    let collection = br#"{"dimension": 3, "metric": "cosine"}"#;
    let resp = post_encoded(
        &app,
        reqwest::Method::PUT,
        "/v1/collections/zipped",
        "gzip",
        gzip(collection),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["config"]["dimension"], 3);
}

/// A coding the server does not decode is a 415 naming the ones it does;
/// data that is not what its header says is a 400; a small compressed body
/// that decodes past the route's limit is a 413 (a decompression bomb must
/// not be held in memory). The server keeps answering.
#[tokio::test]
async fn a_request_body_that_cannot_be_decoded_is_refused_in_the_openai_shape() {
    let app =
        spawn_app("[server]\nbody_limit = 4096\n[[providers]]\nname = \"m\"\nkind = \"mock\"\n")
            .await;
    let chat = serde_json::to_vec(&chat_body("mock-model", false)).unwrap();
    for encoding in ["br", "zstd", "gzip, gzip", "deflate, gzip"] {
        let resp = chat_encoded(&app, encoding, gzip(&chat)).await;
        assert_eq!(resp.status(), 415, "{encoding}");
        assert_eq!(header(&resp, "accept-encoding"), "gzip, deflate, identity");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(
            v["error"]["code"], "unsupported_content_encoding",
            "{encoding}"
        );
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "content-encoding");
    }
    let resp = chat_encoded(&app, "gzip", chat.clone()).await;
    assert_eq!(resp.status(), 400, "plain JSON labelled gzip");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["param"], "content-encoding");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid gzip")
    );

    let big = json!({"model": "mock-model", "messages": [{"role": "user", "content": "x".repeat(1 << 20)}]});
    let bomb = gzip(&serde_json::to_vec(&big).unwrap());
    assert!(bomb.len() < 4096, "{} bytes sent", bomb.len());
    for (encoding, body) in [
        ("gzip", bomb),
        ("deflate", zlib(&serde_json::to_vec(&big).unwrap())),
    ] {
        let resp = chat_encoded(&app, encoding, body).await;
        assert_eq!(resp.status(), 413, "{encoding}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "payload_too_large");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("decodes"),
            "{v}"
        );
    }
    // Larger than the inline threshold: decoded on the blocking pool.
    let app =
        spawn_app("[server]\nbody_limit = 200000\n[[providers]]\nname = \"m\"\nkind = \"mock\"\n")
            .await;
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    let noise: String = (0..150_000)
        .map(|_| {
            // xorshift64: letters that do not compress below 64 KiB
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    let long = json!({"model": "mock-model", "messages": [{"role": "user", "content": noise}]});
    let sent = gzip(&serde_json::to_vec(&long).unwrap());
    assert!(sent.len() > 1024, "{}", sent.len());
    let resp = chat_encoded(&app, "gzip", sent).await;
    assert_eq!(resp.status(), 200);
}

/// A client can name any model (`provider/anything` resolves): the
/// `model` label of `uat_requests_total` keeps at most 1,000 distinct
/// values of at most 128 bytes (unit-tested in the middleware), the rest
/// count as `(other)`. Every value used to be a series kept forever, a
/// 4 MiB name included.
#[tokio::test]
async fn a_model_name_too_long_for_a_label_is_counted_as_other() {
    let app = spawn_app("[[providers]]\nname = \"m\"\nkind = \"mock\"\n").await;
    let model = format!("m/{}", "x".repeat(200));
    let resp = app.chat(chat_body(&model, false)).await;
    assert!(resp.status().as_u16() < 500, "{}", resp.status());
    let text = app.metrics().await;
    assert!(!text.contains(&"x".repeat(200)), "the name is not a label");
    assert!(text.contains("model=\"(other)\""));
}

/// Refusals are timed in their own series (`class="4xx"`), so that the
/// answers' percentiles (the dashboard's, a Grafana panel's over
/// `class="2xx"`) are not pulled down by fast 400s, 401s and 429s; and a
/// model name the upstream refused takes no `model` label (1,000 such
/// names used to fill the label set, and every model seen after counted
/// as `(other)`).
#[tokio::test]
async fn refusals_are_timed_apart_and_refused_names_take_no_label() {
    let up = FakeUpstream::start(Wire::OpenAi, "label-r").await.unwrap();
    up.set_default(Behavior::Status(404));
    let app = spawn_app(&provider_toml("label-r", "openai", &up.base_url(), "")).await;
    let junk = format!("label-r/junk-{}", unique("name"));
    let resp = app.chat(chat_body(&junk, false)).await;
    assert_eq!(resp.status(), 404);
    let resp = app.chat(json!({"model": "label-r-model"})).await;
    assert_eq!(resp.status(), 400, "no messages");
    let text = app.metrics().await;
    assert!(
        text.lines().any(|l| l.starts_with(
            "uat_request_duration_seconds_count{class=\"4xx\",route=\"/v1/chat/completions\"}"
        )),
        "{text}"
    );
    assert!(!text.contains(&junk[8..]), "a refused name is no label");
}

/// Large bodies take room in `server.parse_budget` while they are parsed
/// and served: parsed, a body of small values takes many times its size
/// (this 300 KB one about 24 MB as the estimate counts it), and with no
/// bound a few dozen at once could exhaust memory within every body limit.
/// One that finds no room within `body_read_timeout` gets a 503 with
/// `Retry-After`; small bodies are not held back; the room comes back when
/// the answer is complete.
#[tokio::test]
async fn large_bodies_wait_for_room_in_the_parse_budget() {
    let up = FakeUpstream::start(Wire::OpenAi, "budget").await.unwrap();
    up.push(Behavior::Delay(Duration::from_millis(1500)));
    let app = std::sync::Arc::new(
        spawn_app(&format!(
            "[server]\nparse_budget = 1048576\nbody_read_timeout = \"300ms\"\n{}",
            provider_toml("budget", "openai", &up.base_url(), "")
        ))
        .await,
    );
    let mut large = chat_body("budget-model", false);
    large["metadata_junk"] = json!(vec![0; 150_000]);
    let first = tokio::spawn({
        let (app, large) = (app.clone(), large.clone());
        async move { app.chat(large).await.status() }
    });
    // The first holds the whole budget until its (slow) answer is complete.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let resp = app.chat(large.clone()).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "overloaded", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("parse budget"),
        "{v}"
    );
    assert_eq!(
        app.chat(chat_body("budget-model", false)).await.status(),
        200,
        "a small body takes no room"
    );
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(app.chat(large).await.status(), 200, "the room came back");
}

/// Reads until the server closes the connection; `None` if it is still
/// open after `wait`.
async fn read_until_closed(tcp: &mut tokio::net::TcpStream, wait: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&got).into_owned())
}

/// A client that opens a connection and does not finish its headers (or
/// sends nothing, or idles after a request) is cut off after
/// `server.header_read_timeout`. Before, `axum::serve` ran hyper without a
/// timer, which turns that timeout off: such connections stayed open for
/// ever (slowloris).
#[tokio::test]
async fn a_connection_that_does_not_send_its_headers_is_closed() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app(
        "[server]\nheader_read_timeout = \"300ms\"\n[[providers]]\nname = \"m\"\nkind = \"mock\"\n",
    )
    .await;
    let mut half = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    half.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut silent = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    // One request answered, then nothing on the kept-alive connection.
    let mut idle = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    for (name, tcp) in [
        ("half", &mut half),
        ("silent", &mut silent),
        ("idle", &mut idle),
    ] {
        let text = read_until_closed(tcp, Duration::from_secs(5)).await;
        assert!(text.is_some(), "the {name} connection is still open");
        if name == "idle" {
            let text = text.unwrap_or_default();
            assert!(
                text.starts_with("HTTP/1.1 200"),
                "its request was answered: {text}"
            );
        }
    }
    let resp = app.chat(chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 200, "others are served");
}

/// A client that stops reading its stream is disconnected after
/// `server.write_timeout`, and the in-flight slot its request held is
/// freed (one slot here: the next request is served). Before, hyper waited
/// on the write for ever, holding the slot and the upstream stream.
#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_and_frees_its_slot() {
    use tokio::io::AsyncWriteExt;
    // 1,000 events of 8 KB: more than the socket buffers hold (the client's
    // receive buffer is fixed small, which also turns off its autotuning),
    // so the stream is still being produced when the client stops reading.
    let up = FakeUpstream::start(Wire::OpenAi, "up").await.unwrap();
    up.set_models(&["big"]);
    up.set_reply(&format!("{} ", "x".repeat(8000)).repeat(1000));
    let app = spawn_app(&format!(
        "[server]\nmax_in_flight = 1\nwrite_timeout = \"300ms\"\n[[providers]]\nname = \"m\"\nkind = \"mock\"\n{}",
        provider_toml("up", "openai", &up.base_url(), "")
    ))
    .await;
    let body = serde_json::to_vec(&chat_body("big", true)).unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8192).unwrap();
    let mut tcp = socket.connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || up.calls() == 1).await);
    // Never read. The slot comes back once the write times out.
    assert_eq!(
        served_within(&app, Duration::from_secs(10)).await,
        200,
        "the stalled stream still holds the only slot"
    );
    drop(tcp);
}

/// An HTTP/2 client that keeps a stream's flow-control window shut (its
/// socket otherwise healthy: pings answered) has that stream reset after
/// `server.write_timeout`, and the in-flight slot it held is freed. Before,
/// hyper waited for window for ever and never dropped the response body, so
/// a few such streams took every slot. An HTTP/2 client that reads gets its
/// whole stream.
#[tokio::test]
async fn an_http2_stream_whose_window_stays_shut_frees_its_slot() {
    let app = spawn_app(
        "[server]\nmax_in_flight = 1\nwrite_timeout = \"300ms\"\n[[providers]]\nname = \"m\"\nkind = \"mock\"\n",
    )
    .await;
    let body = bytes::Bytes::from(serde_json::to_vec(&chat_body("mock-model", true)).unwrap());
    let request = || {
        http::Request::post(format!("http://{}/v1/chat/completions", app.addr))
            .header("content-type", "application/json")
            .body(())
            .unwrap()
    };
    // A client that reads: the whole stream, through [DONE].
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let (resp, mut send) = client.send_request(request(), false).unwrap();
    send.send_data(body.clone(), true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.into_body();
    let mut text = Vec::new();
    while let Some(piece) = stream.data().await {
        let piece = piece.unwrap();
        let _ = stream.flow_control().release_capacity(piece.len());
        text.extend_from_slice(&piece);
    }
    assert!(String::from_utf8_lossy(&text).ends_with("data: [DONE]\n\n"));
    // A client whose streams get no window at all.
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (mut client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(conn);
    let (resp, mut send) = client.send_request(request(), false).unwrap();
    send.send_data(body, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200, "headers are not flow-controlled");
    let _held = resp.into_body();
    assert_eq!(
        served_within(&app, Duration::from_secs(5)).await,
        200,
        "the shut stream still holds the only slot"
    );
}

/// Past `server.max_connections` new connections wait until one closes
/// (each connection holds a file descriptor; at the process's limit new
/// ones fail for everyone, upstream connections included).
#[tokio::test]
async fn connections_past_the_cap_wait_for_one_to_close() {
    let app = spawn_app(
        "[server]\nmax_connections = 2\nheader_read_timeout = \"10s\"\n[[providers]]\nname = \"m\"\nkind = \"mock\"\n",
    )
    .await;
    let held: Vec<tokio::net::TcpStream> = vec![
        tokio::net::TcpStream::connect(app.addr).await.unwrap(),
        tokio::net::TcpStream::connect(app.addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = reqwest::Client::new();
    let health = || {
        client
            .get(app.at("/health"))
            .timeout(Duration::from_millis(500))
            .send()
    };
    assert!(health().await.is_err(), "a third connection is not served");
    drop(held);
    let resp = client
        .get(app.at("/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "served once one closed");
    #[cfg(target_os = "linux")]
    assert!(uat_server::raise_fd_limit().is_some_and(|l| l >= 1024));
}

/// A shutdown does not wait for a connection that has sent nothing (a
/// client's spare pooled connection): the server stops at once, not after
/// `header_read_timeout` or the grace period. (The connection's first-byte
/// wait ignored the shutdown: seen as a `uat loadtest --compare` child that
/// did not stop within 10 s of SIGTERM.)
#[tokio::test]
async fn a_shutdown_does_not_wait_for_a_connection_that_sent_nothing() {
    let app =
        spawn_app("[server]\nheader_read_timeout = \"60s\"\nshutdown_grace = \"60s\"\n").await;
    let _spare = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        app.stop(Duration::from_secs(5)).await,
        "the server waited for the silent connection"
    );
}

/// A client that stops sending its body gets a 408 in the OpenAI shape
/// after `server.body_read_timeout`, and its in-flight slot back (one slot
/// here: the next request is served). Before, it held the slot for ever.
#[tokio::test]
async fn a_body_that_stalls_gets_a_408_and_frees_its_slot() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app(
        "[server]\nmax_in_flight = 1\nbody_read_timeout = \"300ms\"\n[[providers]]\nname = \"m\"\nkind = \"mock\"\n",
    )
    .await;
    for path in ["/v1/chat/completions", "/v1/embeddings"] {
        let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\nconnection: close\r\n\r\n{{\"model\":"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let text = read_until_closed(&mut tcp, Duration::from_secs(5))
            .await
            .expect("an answer, then the connection closed");
        assert!(text.starts_with("HTTP/1.1 408"), "{path}: {text}");
        assert!(
            text.contains("\"code\":\"request_timeout\""),
            "{path}: {text}"
        );
        let resp = app.chat(chat_body("mock-model", false)).await;
        assert_eq!(resp.status(), 200, "the slot was given back");
    }
}

/// A client that trickles its body (a byte at a time, each within the idle
/// timeout) gets a 408 once it is below `server.body_min_rate` after the
/// grace, and its slot back; a body that keeps up with the rate is served
/// even though it takes longer than the idle timeout.
#[tokio::test]
async fn a_body_trickled_below_the_minimum_rate_gets_a_408() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app(
        "[server]\nmax_in_flight = 1\nbody_read_timeout = \"300ms\"\nbody_min_rate = 200\n[[providers]]\nname = \"m\"\nkind = \"mock\"\n",
    )
    .await;
    let mut chat = chat_body("mock-model", false);
    chat["messages"][0]["content"] = Value::from(format!("Say hello{}", " ".repeat(200)));
    let body = serde_json::to_vec(&chat).unwrap();
    let addr = app.addr;
    let send = |pieces: Vec<Vec<u8>>, every: Duration| {
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.write_all(head.as_bytes()).await.unwrap();
            for p in pieces {
                if tcp.write_all(&p).await.is_err() {
                    break;
                }
                tokio::time::sleep(every).await;
            }
            read_until_closed(&mut tcp, Duration::from_secs(5))
                .await
                .expect("an answer, then the connection closed")
        }
    };
    // One byte every 100 ms: 10 bytes a second, each piece well within the
    // idle timeout.
    let trickle = body.iter().map(|b| vec![*b]).collect();
    let started = std::time::Instant::now();
    let text = send(trickle, Duration::from_millis(100)).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("arrived too slowly"), "{text}");
    assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut at the grace's end, not after the whole body"
    );
    let resp = app.chat(chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 200, "the slot was given back");
    // The same body in pieces of 40 bytes every 100 ms (400 bytes a
    // second): longer than the idle timeout in all, and served.
    let steady: Vec<Vec<u8>> = body.chunks(40).map(<[u8]>::to_vec).collect();
    assert!(steady.len() >= 4, "the body takes several idle timeouts");
    let text = send(steady, Duration::from_millis(100)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

/// Sends a chat to the mock model until it is answered 200 (a slot was
/// freed) or `within` has passed; the last status.
async fn served_within(app: &TestApp, within: Duration) -> u16 {
    let until = std::time::Instant::now() + within;
    loop {
        let status = app
            .chat(chat_body("mock-model", false))
            .await
            .status()
            .as_u16();
        if status == 200 || std::time::Instant::now() >= until {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn chat_accepting_gzip(app: &TestApp, body: &Value) -> reqwest::Response {
    app.client
        .post(app.at("/v1/chat/completions"))
        .header("accept-encoding", "gzip")
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn gzip_when_the_client_accepts_it() {
    // A long answer from an OpenAI-compatible upstream; the mock's are short.
    let up = FakeUpstream::start(Wire::OpenAi, "up").await.unwrap();
    up.set_models(&["big"]);
    up.set_reply(&"the sea is wide and deep. ".repeat(100));
    let app = spawn_app(&format!(
        "[[providers]]\nname = \"m\"\nkind = \"mock\"\n{}",
        provider_toml("up", "openai", &up.base_url(), "")
    ))
    .await;
    let long = chat_body("big", false);
    let resp = chat_accepting_gzip(&app, &long).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-encoding"), "gzip");
    let raw = resp.bytes().await.unwrap();
    assert_eq!(&raw[..2], &[0x1f, 0x8b], "gzip magic");
    // A short answer (a few hundred bytes) is not worth a deflate stream.
    let resp = chat_accepting_gzip(&app, &chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-encoding"), "");
    let raw = resp.bytes().await.unwrap();
    assert!(raw.len() <= 1024, "{} bytes", raw.len());
    assert!(serde_json::from_slice::<Value>(&raw).is_ok());
    let resp = app.chat(long).await;
    assert_eq!(
        header(&resp, "content-encoding"),
        "",
        "not without Accept-Encoding"
    );
    // Streams are never compressed (that would buffer them).
    let resp = chat_accepting_gzip(&app, &chat_body("mock-model", true)).await;
    assert_eq!(header(&resp, "content-encoding"), "");
}

#[tokio::test]
async fn discovery_refresh_picks_up_new_models() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    up.set_models(&["old"]);
    let toml = format!(
        "{}{}",
        provider_toml("a", "openai", &up.base_url(), ""),
        routing("priority", "discovery_interval = \"150ms\"")
    );
    let app = spawn_app(&toml).await;
    assert_eq!(app.chat(chat_body("new", false)).await.status(), 404);
    up.set_models(&["old", "new"]);
    let router = app.state.gateway.router().clone();
    assert!(eventually(Duration::from_secs(5), || router.has_model("new")).await);
    assert_eq!(app.chat(chat_body("new", false)).await.status(), 200);
    assert!(up.model_calls() >= 2);
    // A failing refresh keeps the last list and marks the provider down.
    up.set_models_status(Some(500));
    let calls = up.model_calls();
    assert!(eventually(Duration::from_secs(5), || up.model_calls() > calls + 1).await);
    assert!(router.has_model("new"));
    assert!(!router.providers()[0].up);
}

#[tokio::test]
async fn configured_models_skip_discovery() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    let app = spawn_app(&provider_toml(
        "a",
        "openai",
        &up.base_url(),
        "models = [\"pinned\"]",
    ))
    .await;
    assert_eq!(up.model_calls(), 0);
    assert!(app.state.gateway.router().has_model("pinned"));
    assert!(!app.state.gateway.router().has_model("a-model"));
}

#[tokio::test]
async fn local_probe_finds_answering_servers_and_starts_without_any() {
    let up = FakeUpstream::start(Wire::Ollama, "local").await.unwrap();
    let mut candidates = uat_router::discovery::local_candidates();
    candidates[0].base_url = Some(up.base_url());
    let (dead, _dead) = closed_port();
    for c in candidates.iter_mut().skip(1) {
        c.base_url = Some(format!("{dead}/v1"));
    }
    let found = uat_router::discovery::probe_local(&candidates).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, "ollama");

    // No providers and probing on: the app starts whatever answers.
    let app = spawn_app("[routing]\nprobe_local = true\n").await;
    let resp = app.client.get(app.at("/v1/models")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(v["data"].is_array());
}

#[tokio::test]
async fn embeddings_are_forwarded_to_remote_providers() {
    let o = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    o.set_models(&["text-embedding-3-small"]);
    let l = FakeUpstream::start(Wire::Ollama, "o").await.unwrap();
    l.set_models(&["nomic-embed-text"]);
    let toml = format!(
        "{}{}",
        provider_toml("a", "openai", &o.base_url(), ""),
        provider_toml("o", "ollama", &l.base_url(), "")
    );
    let app = spawn_app(&toml).await;
    let router = app.state.gateway.router();
    let body = json!({"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 3});
    let r = router
        .embeddings("text-embedding-3-small", &body)
        .await
        .unwrap();
    assert_eq!(&*r.provider, "a");
    let v: Value = serde_json::from_slice(&r.value.body).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(o.last_body().unwrap(), body);

    let r = router
        .embeddings(
            "nomic-embed-text",
            &json!({"model": "nomic-embed-text", "input": "x"}),
        )
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&r.value.body).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["object"], "embedding");
    assert_eq!(v["data"][0]["embedding"], json!([0.0, 0.5, 0.25]));
    assert_eq!(l.requests().last().unwrap().path, "/api/embed");
    // OpenAI's base64 (the openai-node SDK's default), which Ollama does
    // not speak: made by the gateway from Ollama's floats.
    let r = router
        .embeddings(
            "nomic-embed-text",
            &json!({"model": "nomic-embed-text", "input": "x", "encoding_format": "base64"}),
        )
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&r.value.body).unwrap();
    let b64 = v["data"][0]["embedding"].as_str().expect("a base64 string");
    let floats = uat_embed::decode_base64(b64).unwrap();
    assert_eq!(floats, [0.0, 0.5, 0.25]);
    // Another format is refused as OpenAI and the local models refuse it,
    // not answered in floats.
    let calls = l.calls();
    let resp = app
        .post(
            "/v1/embeddings",
            &json!({"model": "nomic-embed-text", "input": "x", "encoding_format": "float16"}),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["param"], "encoding_format", "{v}");
    assert_eq!(l.calls(), calls, "nothing sent to Ollama");
    assert!(!router.has_model("nope"));
    assert!(matches!(
        router.embeddings("nope", &json!({})).await,
        Err(uat_router::RouterError::UnknownModel { .. })
    ));
}

#[tokio::test]
async fn upstream_metrics_are_exported() {
    let up = FakeUpstream::start(Wire::OpenAi, "metrics-a")
        .await
        .unwrap();
    up.push(Behavior::Status(500));
    let app = spawn_app(&provider_toml("metrics-a", "openai", &up.base_url(), "")).await;
    assert_eq!(
        app.chat(chat_body("metrics-a-model", false)).await.status(),
        200
    );
    let mut body = chat_body("metrics-a-model", true);
    body["stream_options"] = json!({"include_usage": true});
    sse_events(app.chat(body).await).await;
    let text = app.metrics().await;
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in metrics"))
            .to_owned()
    };
    assert!(line("uat_provider_up{provider=\"metrics-a\"}").ends_with(" 1"));
    assert!(
        line("uat_provider_errors_total{kind=\"server_error\",provider=\"metrics-a\"}")
            .ends_with(" 1")
    );
    assert!(line("uat_tokens_total{kind=\"completion\",provider=\"metrics-a\"}").ends_with(" 6"));
    assert!(line("uat_upstream_duration_seconds_count{provider=\"metrics-a\"}").ends_with(" 2"));
    assert!(line("uat_time_to_first_token_seconds_count{provider=\"metrics-a\"}").ends_with(" 1"));
    assert!(text.contains("uat_requests_total{model=\"metrics-a-model\",provider=\"metrics-a\",route=\"/v1/chat/completions\",status=\"200\"}"));
}

#[tokio::test]
async fn usage_chunk_only_when_asked_and_mock_failure_rate() {
    let toml = "[[providers]]\nname = \"m\"\nkind = \"mock\"\n[providers.mock]\nchunks = 3\n\
                [[providers]]\nname = \"broken\"\nkind = \"mock\"\nmodels = [\"broken-model\"]\n\
                [providers.mock]\nfailure_rate = 1.0\n";
    let app = spawn_app(toml).await;
    let events = sse_events(app.chat(chat_body("mock-model", true)).await).await;
    assert_eq!(
        events.len(),
        3 + 1 + 1,
        "3 content chunks, finish, [DONE]: {events:?}"
    );
    assert!(
        events.iter().all(|e| !e.contains("\"usage\"")),
        "no usage chunk unless asked"
    );
    let resp = app.chat(chat_body("broken-model", false)).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(header(&resp, "x-uat-provider"), "broken");
    assert_eq!(header(&resp, "x-uat-attempts"), "3");
}

#[tokio::test]
async fn streamed_requests_pass_fields_through_too() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    let app = spawn_app(&provider_toml("a", "openai", &up.base_url(), "")).await;
    let body = json!({
        "model": "a-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": true,
        "stream_options": {"include_usage": true},
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "parallel_tool_calls": false,
        "seed": 1
    });
    let events = sse_events(app.chat(body.clone()).await).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["total_tokens"], 10);
    assert_eq!(up.last_body().unwrap(), body);
}
