//! Text and JSON reports.

use super::engine::{Plan, Stats, Target};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::fmt::Write as _;

/// Milliseconds, from a histogram value in nanoseconds.
pub(crate) fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// P50/P95/P99/max/mean in milliseconds; `None` when nothing was recorded.
pub(crate) fn summary(h: &Histogram<u64>) -> Option<[f64; 5]> {
    if h.is_empty() {
        return None;
    }
    Some([
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.95)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
        h.mean() / 1e6,
    ])
}

fn summary_json(h: &Histogram<u64>) -> Value {
    match summary(h) {
        Some([p50, p95, p99, max, mean]) => {
            json!({"p50": p50, "p95": p95, "p99": p99, "max": max, "mean": mean})
        }
        None => Value::Null,
    }
}

/// The phase as JSON.
pub(crate) fn stats_json(s: &Stats) -> Value {
    let by_status: serde_json::Map<String, Value> = s
        .by_class
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let total = s.total();
    json!({
        "requests": total,
        "ok": s.ok,
        "errors": s.errors,
        "error_rate": if total > 0 { s.errors as f64 / total as f64 } else { 0.0 },
        "shed_503": s.shed(),
        "by_status": by_status,
        "elapsed_s": s.elapsed.as_secs_f64(),
        "requests_per_s": s.rps(),
        "latency_ms": summary_json(&s.latency),
        "service_time_ms": summary_json(&s.service),
        "ttft_ms": summary_json(&s.ttft),
        "error_latency_ms": summary_json(&s.error_latency),
        "client_cpu_ms_per_request": s.own_cpu.filter(|_| total > 0).map(|c| c.as_secs_f64() * 1e3 / total as f64),
    })
}

/// A whole single run as JSON.
pub(crate) fn run_json(target: &Target, plan: &Plan, s: &Stats) -> Value {
    let mut v = stats_json(s);
    if let Some(o) = v.as_object_mut() {
        o.insert("url".into(), json!(target.url));
        o.insert("stream".into(), json!(target.stream));
        o.insert(
            "mode".into(),
            json!(if plan.rate.is_some() {
                "open"
            } else {
                "closed"
            }),
        );
        o.insert("concurrency".into(), json!(plan.concurrency));
        o.insert("rate".into(), json!(plan.rate));
    }
    v
}

/// One line describing the load.
pub(crate) fn describe(target: &Target, plan: &Plan) -> String {
    let load = match plan.rate {
        Some(r) => format!("open loop at {r} req/s"),
        None => format!("closed loop, concurrency {}", plan.concurrency),
    };
    let count = plan
        .requests
        .map(|n| format!(", at most {n} requests"))
        .unwrap_or_default();
    format!(
        "{load}, {} (after {} warm-up){count}, {}",
        humantime::format_duration(plan.duration),
        humantime::format_duration(plan.warmup),
        if target.stream {
            "streamed"
        } else {
            "non-streamed"
        }
    )
}

fn by_status(s: &Stats) -> String {
    let parts: Vec<String> = s
        .by_class
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

fn lat_line(out: &mut String, name: &str, h: &Histogram<u64>) {
    if let Some([p50, p95, p99, max, mean]) = summary(h) {
        let _ = writeln!(
            out,
            "  {name:<13} p50 {p50:.3} ms   p95 {p95:.3} ms   p99 {p99:.3} ms   max {max:.3} ms   mean {mean:.3} ms"
        );
    }
}

/// The text report of a single run.
pub(crate) fn render_run(target: &Target, plan: &Plan, s: &Stats) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "uat loadtest: POST {}", target.url);
    let _ = writeln!(out, "  load          {}", describe(target, plan));
    let total = s.total();
    let rate = if total > 0 {
        100.0 * s.errors as f64 / total as f64
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "  requests      {total} in {:.2} s = {:.1} req/s; ok {}, errors {} ({rate:.2}%)",
        s.elapsed.as_secs_f64(),
        s.rps(),
        s.ok,
        s.errors
    );
    let _ = writeln!(out, "  by status     {}", by_status(s));
    let name = if plan.rate.is_some() {
        "latency*"
    } else {
        "latency"
    };
    lat_line(&mut out, name, &s.latency);
    lat_line(&mut out, "service time", &s.service);
    lat_line(&mut out, "first token", &s.ttft);
    lat_line(&mut out, "failed", &s.error_latency);
    if let Some(c) = s.own_cpu.filter(|_| total > 0) {
        let _ = writeln!(
            out,
            "  client CPU    {:.3} ms/request (this process)",
            c.as_secs_f64() * 1e3 / total as f64
        );
    }
    if !s.error_latency.is_empty() {
        let _ = writeln!(
            out,
            "  latency, service time and first token are of successful requests; failed: of the errors"
        );
    }
    if plan.rate.is_some() {
        let _ = writeln!(
            out,
            "  * open loop: latency from the scheduled send time (no coordinated omission); service time from the actual send"
        );
    }
    out
}
