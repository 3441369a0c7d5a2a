//! The dashboard: `GET /v1/dashboard/summary` follows the live state
//! (requests, latency quantiles, upstream failures, cache hits) and
//! `GET /dashboard` serves the page that polls it.
//!
//! The HTTP metrics are process-wide and other tests run beside these, so
//! exact counts are asserted per provider (each test names its own) and
//! process totals only as lower bounds.

use crate::common::*;
use serde_json::{Value, json};
use uat_testkit::{Behavior, FakeUpstream, Wire};

async fn summary(app: &TestApp) -> Value {
    let resp = app
        .client
        .get(app.at("/v1/dashboard/summary"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

fn provider<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["providers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no provider {name}: {s}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[tokio::test]
async fn requests_and_chat_latency_follow_the_traffic() {
    let name = unique("dm");
    let app = spawn_app(&format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"mock\"\n"
    ))
    .await;
    let before = summary(&app).await;
    assert_eq!(u(&provider(&before, &name)["requests"]), 0);
    assert_eq!(provider(&before, &name)["breaker"], "closed");
    assert!(
        before["cache"].is_null() && before["unavailable"]["cache"].is_string(),
        "cache off: null with a reason, not zeros: {before}"
    );
    const N: u64 = 7;
    for _ in 0..N {
        let resp = app
            .chat(chat_body(&format!("{name}/mock-model"), false))
            .await;
        assert_eq!(resp.status(), 200);
    }
    let after = summary(&app).await;
    let p = provider(&after, &name);
    assert_eq!(u(&p["requests"]), N, "{after}");
    assert_eq!(u(&p["upstream_successes"]), N, "{after}");
    assert!(p["ewma_latency_seconds"].as_f64().unwrap() > 0.0, "{p}");
    let (t0, t1) = (
        u(&before["requests"]["total"]),
        u(&after["requests"]["total"]),
    );
    assert!(t1 >= t0 + N, "total {t0} -> {t1}");
    // The summary calls themselves are not counted: with nothing else in
    // this process the growth would be exactly N.
    let l = &after["chat_latency_seconds"];
    let q = |k: &str| l[k].as_f64().unwrap_or_else(|| panic!("no {k}: {l}"));
    assert!(u(&l["count"]) >= N);
    assert!(q("p50") > 0.0, "{l}");
    assert!(q("p50") <= q("p95") && q("p95") <= q("p99"), "{l}");
    // Two readings: a rate exists, over at most a minute and a bit.
    let rate = &after["requests"]["per_second"];
    assert!(rate["value"].as_f64().unwrap() >= 0.0, "{after}");
    assert!(rate["window_seconds"].as_f64().unwrap() > 0.0, "{after}");
    assert!(after["uptime_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(after["vector"], json!({"collections": 0, "points": 0}));
    assert_eq!(after["memory"]["count"], 0);
}

#[tokio::test]
async fn an_upstream_failure_counts_as_a_5xx() {
    let name = unique("df");
    let up = FakeUpstream::start(Wire::OpenAi, &name).await.unwrap();
    up.set_default(Behavior::Status(500));
    let app = spawn_app(&provider_toml(&name, "openai", &up.base_url(), "")).await;
    let before = summary(&app).await;
    let resp = app.chat(chat_body(&format!("{name}-model"), false)).await;
    assert!(resp.status().is_server_error(), "{}", resp.status());
    let after = summary(&app).await;
    let e0 = u(&before["requests"]["errors"]["5xx"]);
    let e1 = u(&after["requests"]["errors"]["5xx"]);
    assert!(e1 > e0, "5xx {e0} -> {e1}: {after}");
    assert!(after["requests"]["errors"]["rate_5xx"].as_f64().unwrap() > 0.0);
    assert!(
        after["requests"]["per_second"]["rate_5xx"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{after}"
    );
    let p = provider(&after, &name);
    assert!(u(&p["upstream_failures"]) >= 1, "{p}");
    assert_eq!(u(&p["upstream_successes"]), 0, "{p}");
    assert!(p["ewma_error_rate"].as_f64().unwrap() > 0.0, "{p}");
}

#[tokio::test]
async fn cache_hit_rate_matches_the_cache_stats() {
    let name = unique("dc");
    let app = spawn_app(&format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"mock\"\n[cache]\nmode = \"deterministic\"\n"
    ))
    .await;
    let body = json!({
        "model": format!("{name}/mock-model"),
        "messages": [{"role": "user", "content": "Say hello"}],
        "temperature": 0,
    });
    let first = app.chat(body.clone()).await;
    assert_eq!(header(&first, "x-uat-cache"), "miss");
    // The miss is stored in the background.
    let mut hit = false;
    for _ in 0..100 {
        if header(&app.chat(body.clone()).await, "x-uat-cache") == "hit-l1" {
            hit = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(hit, "the repeated request was never a hit");
    let s = summary(&app).await;
    let stats = app.get_json("/v1/cache/stats").await;
    let cache = &s["cache"];
    assert!(cache["hit_rate"].as_f64().unwrap() > 0.0, "{s}");
    for k in ["hits", "misses", "entries", "bytes", "hit_rate"] {
        assert_eq!(cache["levels"]["l1"][k], stats["levels"]["l1"][k], "{k}");
    }
    // The rate is of responses (one miss, then the hits), as the stats say.
    let (h, m) = (
        u(&stats["responses"]["hits"]),
        u(&stats["responses"]["misses"]),
    );
    assert_eq!(m, 1, "{stats}");
    assert_eq!((u(&cache["hits"]), u(&cache["misses"])), (h, m));
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let expected = h as f64 / (h + m) as f64;
    assert!((cache["hit_rate"].as_f64().unwrap() - expected).abs() < 1e-12);
}

#[tokio::test]
async fn the_page_is_self_contained_and_polls_the_summary() {
    let app = spawn_app("").await;
    let resp = app.client.get(app.at("/dashboard")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        header(&resp, "content-type").starts_with("text/html"),
        "{}",
        header(&resp, "content-type")
    );
    let html = resp.text().await.unwrap();
    assert!(html.contains("\"/v1/dashboard/summary\""), "{html}");
    assert!(html.contains("fetch(SUMMARY"));
    assert!(html.contains("<canvas"));
    assert!(html.contains("sessionStorage") && html.contains("\"Bearer \""));
    for external in ["src=\"http", "href=\"http", "<link", "//cdn"] {
        assert!(!html.contains(external), "external asset: {external}");
    }
}

/// With L2 (Redis) on, the summary reuses one reading of the cache's stats
/// for a while (counting L2's entries walks Redis with SCAN), says how old it
/// is, and `GET /v1/cache/stats` still counts afresh.
#[tokio::test]
async fn with_l2_the_summary_reuses_one_cache_reading() {
    let name = unique("dl");
    let redis =
        std::env::var("UAT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let app = spawn_app(&format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"mock\"\n[cache]\nmode = \"deterministic\"\n[cache.l2]\nurl = \"{redis}\"\nkey_prefix = \"uat-test:{}:\"\n",
        unique("dash")
    ))
    .await;
    let first = summary(&app).await;
    assert_eq!(u(&first["cache"]["levels"]["l2"]["entries"]), 0, "{first}");
    assert!(
        first["cache"]["age_seconds"].as_f64().unwrap() < 1e-9,
        "{first}"
    );
    let body = json!({
        "model": format!("{name}/mock-model"),
        "messages": [{"role": "user", "content": "Say hello"}],
        "temperature": 0,
    });
    assert_eq!(header(&app.chat(body).await, "x-uat-cache"), "miss");
    // The L2 write is off the response path: wait until a fresh count sees it.
    let mut stored = false;
    for _ in 0..200 {
        if u(&app.get_json("/v1/cache/stats").await["levels"]["l2"]["entries"]) == 1 {
            stored = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(stored, "the miss never reached L2");
    let again = summary(&app).await;
    assert_eq!(
        u(&again["cache"]["levels"]["l2"]["entries"]),
        0,
        "the reading is reused: {again}"
    );
    assert!(
        again["cache"]["age_seconds"].as_f64().unwrap() > 0.0,
        "{again}"
    );
}
