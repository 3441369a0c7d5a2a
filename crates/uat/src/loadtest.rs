//! `uat loadtest`: an HTTP load generator for the chat-completions route.
//!
//! * closed loop (`--concurrency C`): C workers each send a request, wait for
//!   the whole answer, and send the next;
//! * open loop (`--rate R`): a pacer thread schedules requests at fixed
//!   times whatever the server does, and latency is measured from the
//!   *scheduled* send time, so a stalled server is not hidden by the load
//!   generator politely waiting (coordinated omission);
//! * `--mock`: start the built-in mock upstream and load it directly;
//! * `--compare`: start the mock upstream and a `uat serve` gateway in front
//!   of it, run the same load direct and through `uat`, and print both side
//!   by side with the latency `uat` adds and its CPU time per request.
//!
//! Every run is bounded in time (`--duration`) and optionally in count
//! (`--requests`).

mod compare;
mod engine;
mod procfs;
mod report;

use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `uat loadtest` options.
#[derive(Debug, Clone, Args)]
pub struct LoadtestArgs {
    /// Target base URL, e.g. http://127.0.0.1:3033 (`/v1/chat/completions` is
    /// appended unless the URL already ends with it or with `/v1`).
    #[arg(long, required_unless_present_any = ["mock", "compare"], conflicts_with_all = ["mock", "compare"])]
    pub url: Option<String>,

    /// Closed loop: number of concurrent workers. Open loop: size of the
    /// connection pool.
    #[arg(long, short = 'c', default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub concurrency: u64,

    /// How long to measure (after the warm-up), e.g. `10s`, `500ms`.
    #[arg(long, short = 'd', default_value = "10s", value_parser = uat_config::duration::parse)]
    pub duration: Duration,

    /// Open loop: requests per second, sent on schedule whatever the server does.
    #[arg(long, short = 'r')]
    pub rate: Option<f64>,

    /// Stop after this many requests (the duration still applies).
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,

    /// Load sent before measuring, not counted (connections, caches, JIT-free warm-up).
    #[arg(long, default_value = "1s", value_parser = uat_config::duration::parse)]
    pub warmup: Duration,

    /// Request streamed completions (`"stream": true` with usage) and measure
    /// the time to the first content token.
    #[arg(long)]
    pub stream: bool,

    /// Model to ask for.
    #[arg(long)]
    pub model: Option<String>,

    /// Give every request its own `"seed"` (a counter), so each is a distinct
    /// cache key: measures true cache misses (and, in `deterministic` cache
    /// mode, makes the request cacheable).
    #[arg(long)]
    pub unique: bool,

    /// JSON request body to send instead of the built-in one (`--model` and
    /// `--stream` still override its fields when given).
    #[arg(long, value_name = "FILE")]
    pub body: Option<PathBuf>,
    /// Extra header sent with every request, as `Name: value` (repeatable),
    /// e.g. `--header 'cache-control: no-store'`.
    #[arg(long, short = 'H', value_name = "HEADER")]
    pub header: Vec<String>,

    /// Per-request timeout.
    #[arg(long, default_value = "30s", value_parser = uat_config::duration::parse)]
    pub timeout: Duration,

    /// Ask for gzip responses (off by default: the mock never compresses, so a
    /// fair comparison leaves compression out).
    #[arg(long)]
    pub gzip: bool,

    /// Print one JSON object instead of the text report.
    #[arg(long)]
    pub json: bool,

    /// Do not draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,

    /// Start the built-in mock upstream and load it directly.
    #[arg(long)]
    pub mock: bool,

    /// Start the mock upstream and a `uat` gateway in front of it; run the same
    /// load direct and through `uat` and print both side by side.
    #[arg(long)]
    pub compare: bool,

    /// Mock upstream: delay before the reply / the first stream chunk.
    #[arg(long, default_value = "0s", value_parser = uat_config::duration::parse)]
    pub mock_latency: Duration,

    /// Mock upstream: content chunks per streamed reply.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub mock_chunks: u64,

    /// `--compare`: run the gateway inside this process instead of as a
    /// `uat serve` child (its CPU time then cannot be told apart from the
    /// load generator's).
    #[arg(long)]
    pub in_process: bool,

    /// `--compare`: the gateway's `server.max_in_flight` (load shedding limit).
    #[arg(long)]
    pub max_in_flight: Option<usize>,

    /// `--compare`: the gateway's `server.log_level` (default: the built-in default).
    #[arg(long)]
    pub gateway_log_level: Option<String>,

    /// `--compare`: the `uat` binary to start (default: this one).
    #[arg(long, value_name = "PATH")]
    pub uat_bin: Option<PathBuf>,
}

impl LoadtestArgs {
    fn plan(&self) -> anyhow::Result<engine::Plan> {
        if let Some(r) = self.rate {
            // At least one request per 1,000 s: a request's time on the
            // schedule (its index / rate) stays within the clock's range.
            if !(r.is_finite() && (0.001..=1_000_000.0).contains(&r)) {
                anyhow::bail!("--rate must be from 0.001 to 1000000 requests per second");
            }
        }
        if self.duration.is_zero() {
            anyhow::bail!("--duration must be more than zero");
        }
        Ok(engine::Plan {
            concurrency: usize::try_from(self.concurrency).unwrap_or(usize::MAX),
            duration: self.duration,
            rate: self.rate,
            requests: self.requests,
            warmup: self.warmup,
        })
    }

    fn body(&self) -> anyhow::Result<(bytes::Bytes, bool)> {
        let mut body = match &self.body {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", path.display()))?;
                if !v.is_object() {
                    anyhow::bail!("{}: the request body must be a JSON object", path.display());
                }
                v
            }
            None => serde_json::json!({
                "model": "mock-model",
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "Say hello in one short sentence."}
                ],
                "max_tokens": 32,
                "temperature": 0.7
            }),
        };
        if let Some(obj) = body.as_object_mut() {
            if let Some(m) = &self.model {
                obj.insert("model".into(), serde_json::Value::String(m.clone()));
            }
            if self.stream {
                obj.insert("stream".into(), serde_json::Value::Bool(true));
                obj.entry("stream_options")
                    .or_insert_with(|| serde_json::json!({"include_usage": true}));
            }
        }
        let stream = body
            .get("stream")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        Ok((bytes::Bytes::from(serde_json::to_vec(&body)?), stream))
    }

    fn model(&self) -> String {
        self.model.clone().unwrap_or_else(|| "mock-model".into())
    }

    fn mock_config(&self) -> uat_server::mock_upstream::MockUpstreamConfig {
        uat_server::mock_upstream::MockUpstreamConfig {
            latency: self.mock_latency,
            chunks: usize::try_from(self.mock_chunks).unwrap_or(5),
            models: vec![self.model()],
            ..Default::default()
        }
    }
}

/// The chat-completions URL for a base URL.
fn chat_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/chat/completions") {
        base.to_string()
    } else if base.ends_with("/v1") {
        format!("{base}/chat/completions")
    } else {
        format!("{base}/v1/chat/completions")
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Runs the load test.
pub async fn run(args: &LoadtestArgs, _config: Option<&Path>) -> anyhow::Result<()> {
    let plan = args.plan()?;
    let (body, stream) = args.body()?;
    let progress = !(args.json || args.no_progress);
    let client = engine::client(plan.concurrency, args.timeout, args.gzip)?;
    if args.compare {
        let out = compare::run(args, &plan, &client, body, stream, progress).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&out.to_json())?);
        } else {
            print!("{}", out.render());
        }
        return Ok(());
    }
    let (url, mock) = if args.mock {
        let (_, mock) = uat_server::mock_upstream::spawn_with(loopback(0), args.mock_config())
            .await
            .context("cannot start the mock upstream")?;
        (chat_url(&mock.base_url()), Some(mock))
    } else {
        let base = args
            .url
            .as_deref()
            .context("--url is required without --mock or --compare")?;
        (chat_url(base), None)
    };
    let headers = parse_headers(&args.header)?;
    let target = engine::Target {
        url,
        body,
        stream,
        headers,
        unique: args.unique.then(engine::unique_counter),
    };
    let result = engine::run(&client, &target, &plan, progress, "load").await?;
    if let Some(m) = mock {
        m.shutdown().await;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report::run_json(&target, &plan, &result))?
        );
    } else {
        print!("{}", report::render_run(&target, &plan, &result));
    }
    Ok(())
}

/// Parses `Name: value` headers.
fn parse_headers(raw: &[String]) -> anyhow::Result<reqwest::header::HeaderMap> {
    let mut map = reqwest::header::HeaderMap::new();
    for h in raw {
        let Some((name, value)) = h.split_once(':') else {
            anyhow::bail!("--header `{h}` is not `Name: value`");
        };
        let name = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|e| anyhow::anyhow!("--header `{h}`: {e}"))?;
        let value = reqwest::header::HeaderValue::from_str(value.trim())
            .map_err(|e| anyhow::anyhow!("--header `{h}`: {e}"))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_url_appends_the_route_once() {
        assert_eq!(chat_url("http://h:1"), "http://h:1/v1/chat/completions");
        assert_eq!(chat_url("http://h:1/"), "http://h:1/v1/chat/completions");
        assert_eq!(chat_url("http://h:1/v1"), "http://h:1/v1/chat/completions");
        assert_eq!(
            chat_url("http://h:1/v1/chat/completions"),
            "http://h:1/v1/chat/completions"
        );
    }
}
