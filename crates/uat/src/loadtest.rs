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
//! (`--requests`). One probe request goes first, and a target that refuses
//! the connection fails the run at once; a run in which no request succeeded
//! prints its report and exits non-zero. Latency percentiles are of the
//! successful requests only (a fast 503 would pull them down); the failures
//! are counted by class and timed apart.

mod compare;
mod engine;
mod procfs;
mod report;

use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `uat loadtest` options. An option that would do nothing in the mode asked
/// for (`--in-process` without `--compare`, `--mock-latency` with `--url`, ...)
/// is refused by the parser rather than silently ignored. Exactly one of
/// `--url`, `--mock` and `--compare` is given, so "`--compare` only" is
/// written as a conflict with the other two (clap does not enforce a
/// `requires` whose target conflicts with an argument present).
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("upstream").args(["mock", "compare"]).multiple(false)))]
pub struct LoadtestArgs {
    /// Target base URL, e.g. http://127.0.0.1:3033 (`/v1/chat/completions` is
    /// appended unless the URL already ends with it or with `/v1`).
    #[arg(long, required_unless_present_any = ["mock", "compare"], conflicts_with_all = ["mock", "compare"])]
    pub url: Option<String>,

    /// Closed loop: number of concurrent workers, each on its own connection
    /// (HTTP/1.1; with `--http2`, against an HTTP/2 server, they share one).
    /// Open loop: idle connections kept for reuse; it does not bound the
    /// connections in use, which follow rate x latency (a request finding
    /// every pooled connection busy opens another), up to 20,000 requests in
    /// flight or what the open-file limit allows, past which scheduled
    /// requests are counted as `client-saturated`.
    #[arg(long, short = 'c', default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub concurrency: u64,

    /// How long to measure (after the warm-up), e.g. `10s`, `500ms`.
    #[arg(long, short = 'd', default_value = "10s", value_parser = positive_duration)]
    pub duration: Duration,

    /// Open loop: requests per second, sent on schedule whatever the server does.
    #[arg(long, short = 'r')]
    pub rate: Option<f64>,

    /// Stop after this many requests (the duration still applies).
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u64).range(1..))]
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
    /// e.g. `--header 'cache-control: no-store'` (with `--compare`, on both
    /// sides).
    #[arg(long, short = 'H', value_name = "HEADER")]
    pub header: Vec<String>,

    /// Per-request timeout.
    #[arg(long, default_value = "30s", value_parser = positive_duration)]
    pub timeout: Duration,

    /// Offer HTTP/2 to an https target (TLS ALPN). Off by default: against an
    /// HTTP/2 server every worker and open-loop request would share one
    /// multiplexed connection, and requests past the server's stream limit
    /// would wait in this client, counted as server latency. Needs an
    /// `https://` `--url` (no HTTP/2 over plain http).
    #[arg(long, conflicts_with_all = ["mock", "compare"])]
    pub http2: bool,

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

    /// Mock upstream (`--mock`, `--compare`): delay before the reply / the
    /// first stream chunk.
    #[arg(long, default_value = "0s", value_parser = uat_config::duration::parse, conflicts_with = "url")]
    pub mock_latency: Duration,

    /// Mock upstream (`--mock`, `--compare`): content chunks per streamed reply.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=10_000), conflicts_with = "url")]
    pub mock_chunks: u64,

    /// `--compare`: run the gateway inside this process instead of as a
    /// `uat serve` child (its CPU time then cannot be told apart from the
    /// load generator's).
    #[arg(long, conflicts_with_all = ["url", "mock"])]
    pub in_process: bool,

    /// `--compare`: the gateway's `server.max_in_flight` (load shedding limit).
    #[arg(long, conflicts_with_all = ["url", "mock"])]
    pub max_in_flight: Option<usize>,

    /// `--compare`: the gateway's `server.log_level` (default: the built-in default).
    #[arg(long, conflicts_with_all = ["url", "mock"])]
    pub gateway_log_level: Option<String>,

    /// `--compare`: the `uat` binary to start (default: this one; not with
    /// `--in-process`).
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with_all = ["url", "mock"],
        conflicts_with = "in_process"
    )]
    pub uat_bin: Option<PathBuf>,
}

/// A duration flag that must be more than zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    let d = uat_config::duration::parse(text)?;
    if d.is_zero() {
        return Err(format!("`{text}`: must be more than zero"));
    }
    Ok(d)
}

/// Open files kept back from the connection budget: the runtime, the
/// progress bar, the mock's listener, the gateway's log file, the probes.
const FD_RESERVE: u64 = 64;

impl LoadtestArgs {
    /// Sockets this process holds, roughly, per connection of the load:
    /// one to a remote target; two when the server end is the in-process
    /// mock; with `--compare` the direct phase's pooled connections (both
    /// ends) stay open through the second phase, which adds its own and the
    /// mock's ends of the gateway's connections (and in process the
    /// gateway's two ends as well).
    fn sockets_per_connection(&self) -> u64 {
        match (self.compare, self.in_process, self.mock) {
            (true, true, _) => 6,
            (true, false, _) => 4,
            (false, _, true) => 2,
            (false, _, false) => 1,
        }
    }

    /// Connections the open-file limit leaves room for (`None`: unknown).
    fn connection_budget(&self, fd_limit: Option<u64>) -> Option<u64> {
        fd_limit.map(|l| l.saturating_sub(FD_RESERVE) / self.sockets_per_connection())
    }

    fn plan(&self, fd_limit: Option<u64>) -> anyhow::Result<engine::Plan> {
        if let Some(r) = self.rate {
            // At least one request per 1,000 s: a request's time on the
            // schedule (its index / rate) stays within the clock's range.
            if !(r.is_finite() && (0.001..=1_000_000.0).contains(&r)) {
                anyhow::bail!("--rate must be from 0.001 to 1000000 requests per second");
            }
        }
        let budget = self
            .connection_budget(fd_limit)
            .map_or(usize::MAX, |b| usize::try_from(b).unwrap_or(usize::MAX));
        Ok(engine::Plan {
            concurrency: usize::try_from(self.concurrency).unwrap_or(usize::MAX),
            duration: self.duration,
            rate: self.rate,
            requests: self.requests,
            warmup: self.warmup,
            max_outstanding: engine::MAX_OUTSTANDING.min(budget).max(1),
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

/// Raises the open-file limit and says when it is still too small for the load.
fn open_files(args: &LoadtestArgs) -> Option<u64> {
    let limit = uat_server::raise_fd_limit();
    if let (Some(limit), Some(budget)) = (limit, args.connection_budget(limit)) {
        let per = args.sockets_per_connection();
        if args.rate.is_none() && args.concurrency > budget {
            eprintln!(
                "warning: --concurrency {} needs about {} open files in this process, but the \
                 limit is {limit}: connections past it fail (as connect errors); raise the hard \
                 limit (ulimit -Hn) or lower --concurrency",
                args.concurrency,
                args.concurrency * per + FD_RESERVE
            );
        } else if args.rate.is_some() && budget < engine::MAX_OUTSTANDING as u64 {
            eprintln!(
                "note: the open-file limit ({limit}) allows about {budget} requests in flight; \
                 scheduled requests past that are counted as client-saturated"
            );
        }
    }
    limit
}

/// Fails a run in which nothing succeeded (after its report was printed).
fn require_success(side: &str, s: &engine::Stats) -> anyhow::Result<()> {
    if s.ok == 0 {
        let classes: Vec<String> = s
            .by_class
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        anyhow::bail!(
            "no request {side}succeeded ({} errors: {})",
            s.errors,
            if classes.is_empty() {
                "none sent".to_string()
            } else {
                classes.join(", ")
            }
        );
    }
    Ok(())
}

/// Runs the load test.
pub async fn run(args: &LoadtestArgs) -> anyhow::Result<()> {
    if args.http2
        && !args.url.as_deref().is_some_and(|u| {
            u.get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        })
    {
        anyhow::bail!(
            "--http2 needs an https:// --url: HTTP/2 is negotiated in the TLS handshake, \
             and a plain-http target is loaded over HTTP/1.1 either way"
        );
    }
    let fd_limit = open_files(args);
    let plan = args.plan(fd_limit)?;
    let (body, stream) = args.body()?;
    let headers = parse_headers(&args.header)?;
    let progress = !(args.json || args.no_progress);
    let client = engine::client(plan.concurrency, args.timeout, args.gzip, args.http2)?;
    if args.compare {
        let out = compare::run(args, &plan, &client, body, stream, headers, progress).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&out.to_json())?);
        } else {
            print!("{}", out.render());
        }
        require_success("direct to the mock ", &out.direct)?;
        return require_success("through uat ", &out.through);
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
    let target = engine::Target::new(url, body, stream, headers, args.unique)?;
    engine::probe(&client, &target).await?;
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
    require_success("", &result)
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

    /// `uat loadtest FLAGS` as clap parses it.
    fn parse(flags: &[&str]) -> Result<LoadtestArgs, clap::Error> {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: LoadtestArgs,
        }
        Cli::try_parse_from(std::iter::once("loadtest").chain(flags.iter().copied()))
            .map(|c| c.args)
    }

    #[test]
    fn the_open_file_limit_bounds_requests_in_flight() -> anyhow::Result<()> {
        let url = parse(&["--url", "http://h:1", "--rate", "10"])?;
        assert_eq!(url.plan(Some(1024))?.max_outstanding, 960);
        assert_eq!(
            url.plan(None)?.max_outstanding,
            engine::MAX_OUTSTANDING,
            "unknown limit"
        );
        assert_eq!(
            url.plan(Some(1 << 20))?.max_outstanding,
            engine::MAX_OUTSTANDING
        );
        let compare = parse(&["--compare", "--rate", "10"])?;
        assert_eq!(compare.plan(Some(1024))?.max_outstanding, 240);
        let tiny = parse(&["--mock", "--rate", "10"])?;
        assert_eq!(tiny.plan(Some(10))?.max_outstanding, 1);
        for bad in [&["--mock", "--timeout", "0s"][..], &["--mock", "-n", "0"]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        Ok(())
    }

    #[test]
    fn http2_is_opt_in() -> anyhow::Result<()> {
        assert!(!parse(&["--url", "https://h:1"])?.http2);
        assert!(parse(&["--url", "https://h:1", "--http2"])?.http2);
        Ok(())
    }

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
