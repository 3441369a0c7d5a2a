//! The load generator proper: one shared HTTP client, closed and open loops,
//! and the recorder that fills the HDR histograms.

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Open loop: requests in flight beyond which the generator itself is the
/// bottleneck; further scheduled requests are counted as `client-saturated`.
/// [`Plan::max_outstanding`] may be lower, under a small open-file limit.
pub(crate) const MAX_OUTSTANDING: usize = 20_000;

/// What to send.
pub(crate) struct Target {
    /// The chat-completions URL.
    pub url: String,
    /// The JSON body.
    pub body: Bytes,
    /// Whether the body asks for a stream.
    pub stream: bool,
    /// Extra headers sent with every request (`--header`).
    pub headers: reqwest::header::HeaderMap,
    /// `--unique`: every request gets its own `"seed"` (this counter), so each
    /// one is a distinct cache key: a true cache miss.
    pub unique: Option<Arc<AtomicU64>>,
}

/// A `--unique` counter starting at a value no earlier run used (the clock in
/// microseconds), so a cache kept between runs still misses.
fn unique_counter() -> Arc<AtomicU64> {
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
    Arc::new(AtomicU64::new(start.saturating_mul(1000)))
}

impl Target {
    /// A target. With `unique`, every request gets its own `"seed"`; a seed
    /// already in `body` is taken out first (it would come after the fresh
    /// one, and a JSON parser keeps the last of duplicate keys, so every
    /// request would carry the same seed and hit the cache).
    pub(crate) fn new(
        url: String,
        body: Bytes,
        stream: bool,
        headers: reqwest::header::HeaderMap,
        unique: bool,
    ) -> anyhow::Result<Self> {
        let body = if unique {
            let mut v: serde_json::Value =
                serde_json::from_slice(&body).context("the request body is not JSON")?;
            let obj = v
                .as_object_mut()
                .context("the request body must be a JSON object")?;
            if obj.remove("seed").is_some() {
                Bytes::from(serde_json::to_vec(&v)?)
            } else {
                body
            }
        } else {
            body
        };
        Ok(Target {
            url,
            body,
            stream,
            headers,
            unique: unique.then(unique_counter),
        })
    }

    /// The body of the next request: the shared one, or with `--unique` the
    /// same object with a fresh `"seed"` first (`{"seed":N,...}`; [`Target::new`]
    /// took any other `seed` out).
    fn next_body(&self) -> Bytes {
        let Some(counter) = &self.unique else {
            return self.body.clone();
        };
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let rest = self.body.get(1..).unwrap_or_default();
        let mut out = Vec::with_capacity(self.body.len() + 32);
        out.extend_from_slice(b"{\"seed\":");
        let _ = write!(out, "{n}");
        if rest.first() != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(rest);
        Bytes::from(out)
    }
}

/// How much load, for how long.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub concurrency: usize,
    pub duration: Duration,
    pub rate: Option<f64>,
    pub requests: Option<u64>,
    pub warmup: Duration,
    /// Open loop: requests in flight beyond which further scheduled ones are
    /// counted as `client-saturated` instead of sent (bounded by the
    /// open-file limit, so the generator does not turn its own `EMFILE` into
    /// connect errors blamed on the server).
    pub max_outstanding: usize,
}

/// One shared client: a pool sized to the concurrency, TCP_NODELAY, no proxy.
///
/// HTTP/1.1 only unless `http2`: reqwest would otherwise offer `h2` in the
/// TLS handshake (ALPN), and against an HTTP/2 server every worker's request
/// would be multiplexed on one shared connection, queued in the client past
/// the server's stream limit, with that queueing counted as server latency.
pub(crate) fn client(
    concurrency: usize,
    timeout: Duration,
    gzip: bool,
    http2: bool,
) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency.max(1))
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .no_proxy();
    if !gzip {
        b = b.no_gzip();
    }
    if !http2 {
        b = b.http1_only();
    }
    b.build().context("cannot build the HTTP client")
}

/// How a request ended, for the by-status table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Class {
    /// An HTTP status (2xx streams that broke are reported as `Failure`).
    Http(u16),
    /// No usable HTTP answer.
    Failure(&'static str),
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Class::Http(s) => write!(f, "{s}"),
            Class::Failure(s) => f.write_str(s),
        }
    }
}

struct Outcome {
    class: Class,
    ttft: Option<Duration>,
}

impl Outcome {
    fn ok(&self) -> bool {
        matches!(self.class, Class::Http(s) if (200..300).contains(&s))
    }
}

/// Everything measured in one phase. Latencies are in nanoseconds.
pub(crate) struct Stats {
    /// Successful requests (2xx, read to the end) only: a fast 503 or a
    /// refused connection would otherwise pull the percentiles down.
    /// Closed loop: send to end of answer. Open loop: *scheduled* send to end.
    pub latency: Histogram<u64>,
    /// Open loop only, successful requests only: actual send to end of answer.
    pub service: Histogram<u64>,
    /// Successful streams: to the first non-empty content delta (same origin
    /// as `latency`).
    pub ttft: Histogram<u64>,
    /// Failed requests that got as far as an answer or a timeout (same origin
    /// as `latency`); failures counted without a request sent
    /// (`client-saturated`) are not in it.
    pub error_latency: Histogram<u64>,
    /// Count of every request by how it ended.
    pub by_class: BTreeMap<Class, u64>,
    /// 2xx answers read to the end.
    pub ok: u64,
    /// Everything else.
    pub errors: u64,
    /// Wall time of the phase.
    pub elapsed: Duration,
    /// CPU time of this process (load generator, plus anything in-process) during the phase.
    pub own_cpu: Option<Duration>,
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 ns .. 10 min at 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000_000, 3).context("cannot build a histogram")
}

impl Stats {
    fn new() -> anyhow::Result<Self> {
        Ok(Stats {
            latency: histogram()?,
            service: histogram()?,
            ttft: histogram()?,
            error_latency: histogram()?,
            by_class: BTreeMap::new(),
            ok: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            own_cpu: None,
        })
    }

    /// All requests that ended, successfully or not.
    pub fn total(&self) -> u64 {
        self.ok + self.errors
    }

    /// Requests per second over the phase.
    pub fn rps(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.total() as f64 / s
        } else {
            0.0
        }
    }

    /// 503 answers (deliberate load shedding when the server is `uat`).
    pub fn shed(&self) -> u64 {
        self.by_class.get(&Class::Http(503)).copied().unwrap_or(0)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Shared by every worker; the lock is held for a few histogram updates.
struct Recorder {
    stats: Mutex<Stats>,
    done: AtomicU64,
    errors: AtomicU64,
    open_loop: bool,
}

impl Recorder {
    fn record(&self, scheduled: Instant, sent: Instant, end: Instant, out: &Outcome) {
        let ok = out.ok();
        self.done.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let Ok(mut s) = self.stats.lock() else { return };
        let latency = nanos(end - scheduled).max(1);
        if ok {
            s.latency.saturating_record(latency);
            if self.open_loop {
                s.service.saturating_record(nanos(end - sent).max(1));
            }
            if let Some(t) = out.ttft {
                s.ttft.saturating_record(nanos(t).max(1));
            }
        } else {
            s.error_latency.saturating_record(latency);
        }
        *s.by_class.entry(out.class).or_insert(0) += 1;
        if ok {
            s.ok += 1;
        } else {
            s.errors += 1;
        }
    }

    fn record_failure(&self, what: &'static str) {
        self.done.fetch_add(1, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.stats.lock() {
            *s.by_class.entry(Class::Failure(what)).or_insert(0) += 1;
            s.errors += 1;
        }
    }
}

fn classify(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "transport"
    }
}

/// The next request of the load: the target's body (unique when asked) and headers.
fn post(client: &reqwest::Client, target: &Target) -> reqwest::RequestBuilder {
    client
        .post(&target.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .headers(target.headers.clone())
        .body(target.next_body())
}

/// Sends one request and reads the whole answer. `origin` is the time
/// latency and TTFT are measured from.
async fn one_request(client: &reqwest::Client, target: &Target, origin: Instant) -> Outcome {
    let sent = post(client, target).send().await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            return Outcome {
                class: Class::Failure(classify(&e)),
                ttft: None,
            };
        }
    };
    let status = resp.status();
    let class = Class::Http(status.as_u16());
    if !target.stream || !status.is_success() {
        return match resp.bytes().await {
            Ok(_) => Outcome { class, ttft: None },
            Err(e) => Outcome {
                class: Class::Failure(classify(&e)),
                ttft: None,
            },
        };
    }
    let mut scanner = SseScanner::default();
    let mut ttft = None;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(b) => {
                scanner.feed(&b);
                if ttft.is_none() && scanner.saw_content {
                    ttft = Some(origin.elapsed());
                }
            }
            Err(e) => {
                return Outcome {
                    class: Class::Failure(classify(&e)),
                    ttft,
                };
            }
        }
    }
    let class = if scanner.saw_error {
        Class::Failure("stream-error")
    } else if !scanner.done {
        Class::Failure("stream-truncated")
    } else {
        class
    };
    Outcome { class, ttft }
}

/// Finds SSE events in a byte stream: the first content delta, an error
/// event, and the closing `[DONE]`.
#[derive(Default)]
pub(crate) struct SseScanner {
    buf: Vec<u8>,
    pub saw_content: bool,
    pub saw_error: bool,
    pub done: bool,
}

#[derive(Deserialize)]
struct ChunkProbe {
    #[serde(default)]
    choices: Vec<ChoiceProbe>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct ChoiceProbe {
    #[serde(default)]
    delta: Option<DeltaProbe>,
}

#[derive(Deserialize)]
struct DeltaProbe {
    #[serde(default)]
    content: Option<String>,
}

impl SseScanner {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(pos) = find_event_end(&self.buf[start..]) {
            let (event_len, sep_len) = pos;
            let event = &self.buf[start..start + event_len];
            Self::event(
                event,
                &mut self.saw_content,
                &mut self.saw_error,
                &mut self.done,
            );
            start += event_len + sep_len;
        }
        self.buf.drain(..start);
    }

    fn event(event: &[u8], saw_content: &mut bool, saw_error: &mut bool, done: &mut bool) {
        for line in event.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = data.strip_prefix(b" ").unwrap_or(data);
            if data == b"[DONE]" {
                *done = true;
                continue;
            }
            match serde_json::from_slice::<ChunkProbe>(data) {
                Ok(c) => {
                    if c.error.is_some() {
                        *saw_error = true;
                    }
                    if c.choices.iter().any(|ch| {
                        ch.delta
                            .as_ref()
                            .and_then(|d| d.content.as_deref())
                            .is_some_and(|t| !t.is_empty())
                    }) {
                        *saw_content = true;
                    }
                }
                Err(_) => *saw_error = true,
            }
        }
    }
}

/// Length of the next complete event and of its separator (`\n\n` or `\r\n\r\n`).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    for i in 0..buf.len() {
        if buf[i..].starts_with(b"\n\n") {
            return Some((i, 2));
        }
        if buf[i..].starts_with(b"\r\n\r\n") {
            return Some((i, 4));
        }
    }
    None
}

/// One request before any load, not recorded: a target nobody listens on
/// fails the run at once, instead of the run spinning on refused connections
/// for its warm-up and its whole duration. Any answer, even an error status,
/// lets the run go on (it counts them).
pub(crate) async fn probe(client: &reqwest::Client, target: &Target) -> anyhow::Result<()> {
    let sent = post(client, target).send().await;
    match sent {
        Ok(resp) => {
            // Read to the end, so the connection goes back to the pool.
            let _ = resp.bytes().await;
            Ok(())
        }
        Err(e) if e.is_connect() => {
            Err(anyhow::Error::new(e).context(format!("cannot connect to {}", target.url)))
        }
        Err(_) => Ok(()),
    }
}

/// Runs the warm-up (not recorded) and then the measured phase.
pub(crate) async fn run(
    client: &reqwest::Client,
    target: &Target,
    plan: &Plan,
    progress: bool,
    label: &str,
) -> anyhow::Result<Stats> {
    warmup(client, target, plan).await?;
    phase(client, target, plan, progress, label).await
}

/// Sends the plan's load for its warm-up time and forgets the results.
pub(crate) async fn warmup(
    client: &reqwest::Client,
    target: &Target,
    plan: &Plan,
) -> anyhow::Result<()> {
    if !plan.warmup.is_zero() {
        let warm = Plan {
            duration: plan.warmup,
            requests: None,
            ..plan.clone()
        };
        let _ = phase(client, target, &warm, false, "warm-up").await?;
    }
    Ok(())
}

/// One measured phase.
pub(crate) async fn phase(
    client: &reqwest::Client,
    target: &Target,
    plan: &Plan,
    progress: bool,
    label: &str,
) -> anyhow::Result<Stats> {
    let rec = Arc::new(Recorder {
        stats: Mutex::new(Stats::new()?),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        open_loop: plan.rate.is_some(),
    });
    let bar = progress_bar(plan, progress, label);
    let ticker = {
        let (rec, bar) = (rec.clone(), bar.clone());
        let started = Instant::now();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                tick(&bar, &rec, started);
            }
        })
    };
    let cpu0 = super::procfs::cpu_time(None);
    let start = Instant::now();
    match plan.rate {
        None => closed_loop(client, target, plan, &rec).await,
        Some(rate) => open_loop(client, target, plan, rate, &rec).await?,
    }
    let elapsed = start.elapsed();
    let cpu1 = super::procfs::cpu_time(None);
    ticker.abort();
    let _ = ticker.await;
    bar.finish_and_clear();
    let rec = Arc::into_inner(rec).context("load workers still running")?;
    let mut stats = rec
        .stats
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a load worker panicked"))?;
    stats.elapsed = elapsed;
    stats.own_cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    Ok(stats)
}

fn progress_bar(plan: &Plan, progress: bool, label: &str) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(
        Some(u64::try_from(plan.duration.as_millis()).unwrap_or(u64::MAX)),
        ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {elapsed:>4} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_string());
    bar
}

fn tick(bar: &ProgressBar, rec: &Recorder, started: Instant) {
    let done = rec.done.load(Ordering::Relaxed);
    let errors = rec.errors.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    bar.set_position(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
    bar.set_message(format!(
        "{done} requests, {:.0}/s, {errors} errors",
        done as f64 / secs
    ));
}

async fn closed_loop(client: &reqwest::Client, target: &Target, plan: &Plan, rec: &Arc<Recorder>) {
    let deadline = Instant::now() + plan.duration;
    let budget = Arc::new(AtomicU64::new(0));
    let target = Arc::new(Target {
        url: target.url.clone(),
        body: target.body.clone(),
        stream: target.stream,
        headers: target.headers.clone(),
        unique: target.unique.clone(),
    });
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..plan.concurrency {
        let (client, target, rec, budget) =
            (client.clone(), target.clone(), rec.clone(), budget.clone());
        let limit = plan.requests;
        workers.spawn(async move {
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                if let Some(n) = limit
                    && budget.fetch_add(1, Ordering::Relaxed) >= n
                {
                    break;
                }
                let t0 = Instant::now();
                let out = one_request(&client, &target, t0).await;
                rec.record(t0, t0, Instant::now(), &out);
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

async fn open_loop(
    client: &reqwest::Client,
    target: &Target,
    plan: &Plan,
    rate: f64,
    rec: &Arc<Recorder>,
) -> anyhow::Result<()> {
    let handle = tokio::runtime::Handle::current();
    let outstanding = Arc::new(AtomicUsize::new(0));
    let target = Arc::new(Target {
        url: target.url.clone(),
        body: target.body.clone(),
        stream: target.stream,
        headers: target.headers.clone(),
        unique: target.unique.clone(),
    });
    let (client, duration, limit) = (client.clone(), plan.duration, plan.requests);
    let max_outstanding = plan.max_outstanding.max(1);
    let pacer = {
        let (rec, outstanding) = (rec.clone(), outstanding.clone());
        // A plain thread sleeps with ~0.1 ms precision; the async timer's
        // 1 ms granularity would add up to a millisecond to every latency.
        std::thread::Builder::new()
            .name("uat-loadtest-pacer".into())
            .spawn(move || {
                let start = Instant::now();
                let mut i: u64 = 0;
                loop {
                    if limit.is_some_and(|n| i >= n) {
                        break;
                    }
                    let offset = Duration::from_secs_f64(i as f64 / rate);
                    if offset >= duration {
                        break;
                    }
                    let due = start + offset;
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    i += 1;
                    if outstanding.load(Ordering::Relaxed) >= max_outstanding {
                        rec.record_failure("client-saturated");
                        continue;
                    }
                    outstanding.fetch_add(1, Ordering::Relaxed);
                    let (client, target, rec, outstanding) = (
                        client.clone(),
                        target.clone(),
                        rec.clone(),
                        outstanding.clone(),
                    );
                    handle.spawn(async move {
                        let sent = Instant::now();
                        let out = one_request(&client, &target, due).await;
                        rec.record(due, sent, Instant::now(), &out);
                        // Release the recorder before saying we are done:
                        // the phase takes it back once nothing is outstanding.
                        drop(rec);
                        outstanding.fetch_sub(1, Ordering::Release);
                    });
                }
            })
            .context("cannot start the pacer thread")?
    };
    tokio::task::spawn_blocking(move || pacer.join())
        .await
        .context("pacer task failed")?
        .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    // Every request is bounded by the client timeout.
    while outstanding.load(Ordering::Acquire) > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ALPN protocols offered in a TLS ClientHello (the handshake message
    /// after the 5-byte record header), in order.
    fn alpn_offered(hello: &[u8]) -> Option<Vec<String>> {
        fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (a, b) = r.split_at_checked(n)?;
            *r = b;
            Some(a)
        }
        fn len(r: &mut &[u8], bytes: usize) -> Option<usize> {
            Some(
                take(r, bytes)?
                    .iter()
                    .fold(0, |n, &b| (n << 8) | usize::from(b)),
            )
        }
        let mut r = hello;
        // Handshake type 1 (ClientHello), its length, version, random.
        if take(&mut r, 1)? != [1] {
            return None;
        }
        take(&mut r, 3 + 2 + 32)?;
        let n = len(&mut r, 1)?; // session id
        take(&mut r, n)?;
        let n = len(&mut r, 2)?; // cipher suites
        take(&mut r, n)?;
        let n = len(&mut r, 1)?; // compression methods
        take(&mut r, n)?;
        let n = len(&mut r, 2)?;
        let mut exts = take(&mut r, n)?;
        while !exts.is_empty() {
            let kind = len(&mut exts, 2)?;
            let n = len(&mut exts, 2)?;
            let mut data = take(&mut exts, n)?;
            if kind == 16 {
                let n = len(&mut data, 2)?;
                let mut list = take(&mut data, n)?;
                let mut out = Vec::new();
                while !list.is_empty() {
                    let n = len(&mut list, 1)?;
                    out.push(String::from_utf8_lossy(take(&mut list, n)?).into_owned());
                }
                return Some(out);
            }
        }
        Some(Vec::new())
    }

    /// The client offers only HTTP/1.1 in the TLS handshake unless asked for
    /// HTTP/2: an `h2` offer let an HTTP/2 ingress multiplex every worker on
    /// one connection. A plain TCP listener reads the ClientHello.
    #[tokio::test]
    async fn http2_is_offered_to_tls_servers_only_when_asked() -> anyhow::Result<()> {
        use std::io::Read as _;
        for (http2, want) in [(false, &["http/1.1"][..]), (true, &["h2", "http/1.1"])] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let server = std::thread::spawn(move || -> anyhow::Result<Vec<String>> {
                let (mut s, _) = listener.accept()?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut head = [0u8; 5];
                s.read_exact(&mut head)?;
                anyhow::ensure!(head[0] == 22, "not a TLS handshake record: {head:?}");
                let mut hello = vec![0; usize::from(u16::from_be_bytes([head[3], head[4]]))];
                s.read_exact(&mut hello)?;
                alpn_offered(&hello).context("not a ClientHello")
            });
            let c = client(1, Duration::from_secs(10), false, http2)?;
            // The listener hangs up after the ClientHello: the request fails.
            let _ = c.get(format!("https://{addr}/")).send().await;
            let offered = server
                .join()
                .map_err(|_| anyhow::anyhow!("the listener thread panicked"))??;
            assert_eq!(offered, want, "http2: {http2}");
        }
        Ok(())
    }

    #[test]
    fn unique_bodies_differ_and_stay_json() -> anyhow::Result<()> {
        let target = Target {
            url: String::new(),
            body: Bytes::from_static(br#"{"model":"m","temperature":0}"#),
            stream: false,
            headers: reqwest::header::HeaderMap::new(),
            unique: Some(Arc::new(AtomicU64::new(7))),
        };
        let a: serde_json::Value = serde_json::from_slice(&target.next_body())?;
        let b: serde_json::Value = serde_json::from_slice(&target.next_body())?;
        assert_eq!(a["seed"], 7);
        assert_eq!(b["seed"], 8);
        assert_eq!(a["model"], "m");
        assert_eq!(b["temperature"], 0);
        let empty = Target {
            body: Bytes::from_static(b"{}"),
            ..target
        };
        let c: serde_json::Value = serde_json::from_slice(&empty.next_body())?;
        assert_eq!(c, serde_json::json!({"seed": 9}));
        let plain = Target {
            unique: None,
            ..empty
        };
        assert_eq!(plain.next_body(), Bytes::from_static(b"{}"));
        Ok(())
    }

    #[test]
    fn unique_replaces_a_seed_already_in_the_body() -> anyhow::Result<()> {
        let target = Target::new(
            String::new(),
            Bytes::from_static(br#"{"seed":5,"model":"m"}"#),
            false,
            reqwest::header::HeaderMap::new(),
            true,
        )?;
        // serde_json keeps the last of duplicate keys, as the server does.
        let a: serde_json::Value = serde_json::from_slice(&target.next_body())?;
        let b: serde_json::Value = serde_json::from_slice(&target.next_body())?;
        assert_ne!(a["seed"], b["seed"], "{a} {b}");
        assert_ne!(a["seed"], 5, "{a}");
        assert_eq!(b["model"], "m");
        Ok(())
    }

    #[test]
    fn scanner_sees_content_done_and_errors_across_split_reads() {
        let stream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: [DONE]\n\n"
        )
        .as_bytes();
        // Feed one byte at a time: events split anywhere must still be found.
        let mut s = SseScanner::default();
        let first_event_len = stream.iter().position(|b| *b == b'\n').unwrap_or(0) + 2;
        for (i, b) in stream.iter().enumerate() {
            s.feed(&[*b]);
            if i < first_event_len {
                assert!(!s.saw_content, "the role chunk carries no content");
            }
        }
        assert!(s.saw_content && s.done && !s.saw_error);

        let mut e = SseScanner::default();
        e.feed(b"data: {\"error\":{\"message\":\"upstream died\"}}\r\n\r\n");
        assert!(e.saw_error && !e.done);
    }

    #[test]
    fn recorder_counts_errors_by_class() -> anyhow::Result<()> {
        let rec = Recorder {
            stats: Mutex::new(Stats::new()?),
            done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            open_loop: true,
        };
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(2);
        let t2 = t0 + Duration::from_millis(5);
        rec.record(
            t0,
            t1,
            t2,
            &Outcome {
                class: Class::Http(200),
                ttft: None,
            },
        );
        // A fast 503 (0.1 ms) must not pull the latency percentiles down.
        rec.record(
            t0,
            t0,
            t0 + Duration::from_micros(100),
            &Outcome {
                class: Class::Http(503),
                ttft: None,
            },
        );
        rec.record_failure("connect");
        let s = rec
            .stats
            .into_inner()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        assert_eq!((s.ok, s.errors, s.shed()), (1, 2, 1));
        // Only the 200 is in the latency histograms; the 503 is in its own.
        assert_eq!(s.latency.len(), 1);
        assert_eq!(s.service.len(), 1);
        assert_eq!(s.error_latency.len(), 1);
        // Latency from the scheduled time (5 ms), service time from the send (3 ms).
        let lat = s.latency.value_at_quantile(0.5);
        let svc = s.service.value_at_quantile(0.5);
        assert!((4_990_000..=5_010_000).contains(&lat), "{lat}");
        assert!((2_990_000..=3_010_000).contains(&svc), "{svc}");
        Ok(())
    }
}
