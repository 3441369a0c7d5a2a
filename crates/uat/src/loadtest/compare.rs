//! `uat loadtest --compare`: the same load direct to the mock upstream and
//! through a `uat` gateway in front of it, side by side.
//!
//! By default the gateway is a `uat serve` child process, so its CPU time
//! (`/proc/PID/stat` utime + stime) and memory (`VmRSS`) are its own and not
//! mixed with the load generator's and the mock's.

use super::engine::{self, Plan, Stats, Target};
use super::report::{self, summary};
use super::{LoadtestArgs, chat_url, loopback, procfs};
use anyhow::Context;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `uat serve` may take to answer `/health`.
const STARTUP_LIMIT: Duration = Duration::from_secs(20);

/// What the comparison measured.
pub(crate) struct CompareResult {
    load: String,
    mock_url: String,
    uat_url: String,
    pub(crate) direct: Stats,
    pub(crate) through: Stats,
    gw: GatewayFacts,
}

#[derive(Default)]
struct GatewayFacts {
    /// `child` or `in-process`.
    mode: &'static str,
    pid: Option<u32>,
    startup: Option<Duration>,
    first_chat: Option<Duration>,
    rss_idle: Option<u64>,
    rss_after: Option<u64>,
    /// Gateway CPU over the measured phase (child mode only).
    cpu: Option<Duration>,
    shutdown: Option<Duration>,
    exit: Option<String>,
}

/// A directory removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("uat-loadtest-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
        Ok(ScratchDir(p))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed when dropped (if still running).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Asks a child to stop: SIGTERM, sent directly (the external `kill`
/// program is missing from slim images). Errors are ignored: a child already
/// gone is seen by the caller's wait; one that does not stop is killed when
/// its guard drops.
#[cfg(unix)]
fn terminate(child: &mut Child) {
    let pid = rustix::process::Pid::from_child(child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
}

/// Off Unix there is no SIGTERM: the child is killed.
#[cfg(not(unix))]
fn terminate(child: &mut Child) {
    let _ = child.kill();
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind(loopback(0)).context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

fn toml_str(s: &str) -> String {
    // A JSON string is a valid TOML basic string.
    serde_json::Value::String(s.to_string()).to_string()
}

/// The gateway configuration: one `openai` provider pointing at the mock,
/// no cache, no local probing, scratch storage.
fn gateway_toml(args: &LoadtestArgs, listen: &str, mock_base: &str, data_dir: &Path) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "[server]\nlisten = {}", toml_str(listen));
    if let Some(m) = args.max_in_flight {
        let _ = writeln!(t, "max_in_flight = {m}");
    }
    if let Some(l) = &args.gateway_log_level {
        let _ = writeln!(t, "log_level = {}", toml_str(l));
    }
    let _ = writeln!(
        t,
        "\n[[providers]]\nname = \"mock-upstream\"\nkind = \"openai\"\nbase_url = {}\nmodels = [{}]",
        toml_str(mock_base),
        toml_str(&args.model())
    );
    let _ = writeln!(t, "\n[routing]\nprobe_local = false");
    let _ = writeln!(t, "\n[cache]\nmode = \"off\"");
    let _ = writeln!(
        t,
        "\n[storage]\ndata_dir = {}",
        toml_str(&data_dir.display().to_string())
    );
    t
}

enum Gateway {
    Child(ChildGuard),
    InProcess {
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    },
}

async fn wait_for_health(
    probe: &reqwest::Client,
    base: &str,
    started: Instant,
    child: Option<&mut ChildGuard>,
    log: &Path,
) -> anyhow::Result<Duration> {
    let url = format!("{base}/health");
    let mut child = child;
    loop {
        if let Ok(r) = probe.get(&url).send().await
            && r.status().is_success()
        {
            return Ok(started.elapsed());
        }
        if let Some(c) = child.as_deref_mut()
            && let Ok(Some(status)) = c.0.try_wait()
        {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            anyhow::bail!("`uat serve` exited during start-up ({status}):\n{tail}");
        }
        if started.elapsed() > STARTUP_LIMIT {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            anyhow::bail!("`uat serve` did not answer {url} within {STARTUP_LIMIT:?}:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs the comparison.
pub(crate) async fn run(
    args: &LoadtestArgs,
    plan: &Plan,
    client: &reqwest::Client,
    body: bytes::Bytes,
    stream: bool,
    headers: reqwest::header::HeaderMap,
    progress: bool,
) -> anyhow::Result<CompareResult> {
    let (_, mock) = uat_server::mock_upstream::spawn_with(loopback(0), args.mock_config())
        .await
        .context("cannot start the mock upstream")?;
    let scratch = ScratchDir::new()?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let uat_base = format!("http://{listen}");
    let cfg_text = gateway_toml(args, &listen, &mock.base_url(), &scratch.0.join("data"));
    let cfg_path = scratch.0.join("uat.toml");
    std::fs::write(&cfg_path, &cfg_text)
        .with_context(|| format!("cannot write {}", cfg_path.display()))?;
    let log_path = scratch.0.join("uat.log");
    let probe = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_millis(500))
        .build()?;

    let mut gw = GatewayFacts::default();
    let started = Instant::now();
    let mut gateway = if args.in_process {
        gw.mode = "in-process";
        let cfg = uat_config::Config::from_toml(&cfg_text)
            .context("the generated gateway config is invalid")?;
        let opts = uat_server::ServeOptions::from(&cfg.server);
        let listener = uat_server::bind(&listen).await?;
        let state = uat_server::build(cfg).await?;
        let app = uat_server::app(state);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(uat_server::serve(
            listener,
            app,
            async move {
                let _ = stopped.await;
            },
            opts,
        ));
        gw.startup = Some(wait_for_health(&probe, &uat_base, started, None, &log_path).await?);
        Gateway::InProcess { stop, task }
    } else {
        gw.mode = "child";
        let bin = match &args.uat_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe().context("cannot find the uat binary")?,
        };
        let log = std::fs::File::create(&log_path)?;
        let log2 = log.try_clone()?;
        let mut cmd = Command::new(&bin);
        // The gateway is configured by its file alone: the caller's `UAT_*`
        // environment (a deployment's `UAT_SERVER__LISTEN` or
        // `UAT_STORAGE__DATA_DIR=/data`) would move it onto a running
        // server's port or into production data.
        for (k, _) in std::env::vars_os() {
            if k.as_encoded_bytes()
                .starts_with(uat_config::ENV_PREFIX.as_bytes())
            {
                cmd.env_remove(&k);
            }
        }
        cmd.env_remove("RUST_LOG");
        let child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&cfg_path)
            .current_dir(&scratch.0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut guard = ChildGuard(child);
        gw.pid = Some(guard.0.id());
        gw.startup =
            Some(wait_for_health(&probe, &uat_base, started, Some(&mut guard), &log_path).await?);
        gw.rss_idle = procfs::rss_bytes(gw.pid);
        Gateway::Child(guard)
    };

    // One request through uat before any load: start-up to the first answer,
    // and a clear message when the gateway cannot serve the route at all.
    let direct = Target::new(
        chat_url(&mock.base_url()),
        body.clone(),
        stream,
        headers.clone(),
        args.unique,
    )?;
    let through = Target::new(chat_url(&uat_base), body, stream, headers, args.unique)?;
    let first = client
        .post(&through.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .headers(through.headers.clone())
        .body(through.body.clone())
        .send()
        .await
        .context("the first request through uat failed")?;
    let status = first.status();
    let text = first.text().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("uat answered the first chat request with {status}: {text}");
    }
    gw.first_chat = Some(started.elapsed());

    engine::warmup(client, &direct, plan).await?;
    let direct_stats = engine::phase(client, &direct, plan, progress, "direct").await?;
    engine::warmup(client, &through, plan).await?;
    let cpu0 = procfs::cpu_time(gw.pid);
    let through_stats = engine::phase(client, &through, plan, progress, "through uat").await?;
    let cpu1 = procfs::cpu_time(gw.pid);
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        gw.cpu = Some(b.saturating_sub(a));
    }
    gw.rss_after = procfs::rss_bytes(gw.pid);

    let stop_at = Instant::now();
    match &mut gateway {
        Gateway::Child(guard) => {
            terminate(&mut guard.0);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = guard.0.try_wait() {
                    gw.shutdown = Some(stop_at.elapsed());
                    gw.exit = Some(status.to_string());
                    break;
                }
                if Instant::now() > deadline {
                    gw.exit = Some("did not stop within 10 s of SIGTERM; killed".into());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        Gateway::InProcess { .. } => {}
    }
    if let Gateway::InProcess { stop, task } = gateway {
        let _ = stop.send(());
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(Ok(()))) => {
                gw.shutdown = Some(stop_at.elapsed());
                gw.exit = Some("stopped".into());
            }
            Ok(Ok(Err(e))) => gw.exit = Some(format!("server error: {e}")),
            Ok(Err(e)) => gw.exit = Some(format!("server task failed: {e}")),
            Err(_) => gw.exit = Some("did not stop within 10 s".into()),
        }
    }
    let mock_url = mock.base_url();
    mock.shutdown().await;
    Ok(CompareResult {
        load: report::describe(&direct, plan),
        mock_url,
        uat_url: uat_base,
        direct: direct_stats,
        through: through_stats,
        gw,
    })
}

fn per_request_ms(cpu: Option<Duration>, n: u64) -> Option<f64> {
    cpu.filter(|_| n > 0)
        .map(|c| c.as_secs_f64() * 1e3 / n as f64)
}

fn mb(b: Option<u64>) -> Option<f64> {
    b.map(|b| b as f64 / (1024.0 * 1024.0))
}

impl CompareResult {
    /// Gateway CPU per request: measured on the child, or estimated in-process
    /// as (process CPU per request through uat) - (the same, direct).
    fn gateway_cpu_ms(&self) -> Option<f64> {
        match self.gw.mode {
            "child" => per_request_ms(self.gw.cpu, self.through.total()),
            _ => {
                let t = per_request_ms(self.through.own_cpu, self.through.total())?;
                let d = per_request_ms(self.direct.own_cpu, self.direct.total())?;
                Some(t - d)
            }
        }
    }

    fn added(&self) -> Value {
        let pair = |a: &hdrhistogram::Histogram<u64>, b: &hdrhistogram::Histogram<u64>| match (
            summary(a),
            summary(b),
        ) {
            (Some(d), Some(t)) => {
                json!({"p50": t[0] - d[0], "p95": t[1] - d[1], "p99": t[2] - d[2], "max": t[3] - d[3], "mean": t[4] - d[4]})
            }
            _ => Value::Null,
        };
        json!({
            "latency_ms": pair(&self.direct.latency, &self.through.latency),
            "service_time_ms": pair(&self.direct.service, &self.through.service),
            "ttft_ms": pair(&self.direct.ttft, &self.through.ttft),
        })
    }

    /// The comparison as JSON.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "load": self.load,
            "mock_url": self.mock_url,
            "uat_url": self.uat_url,
            "direct": report::stats_json(&self.direct),
            "uat": report::stats_json(&self.through),
            "added": self.added(),
            "gateway": {
                "mode": self.gw.mode,
                "pid": self.gw.pid,
                "cpu_ms_per_request": self.gateway_cpu_ms(),
                "cpu_ms_total": self.gw.cpu.map(|c| c.as_secs_f64() * 1e3),
                "startup_to_health_ms": self.gw.startup.map(|d| d.as_secs_f64() * 1e3),
                "startup_to_first_chat_ms": self.gw.first_chat.map(|d| d.as_secs_f64() * 1e3),
                "rss_idle_mb": mb(self.gw.rss_idle),
                "rss_after_mb": mb(self.gw.rss_after),
                "shutdown_ms": self.gw.shutdown.map(|d| d.as_secs_f64() * 1e3),
                "exit": self.gw.exit,
            }
        })
    }

    /// The side-by-side text report.
    pub(crate) fn render(&self) -> String {
        let (d, t) = (&self.direct, &self.through);
        let mut o = String::new();
        let _ = writeln!(
            o,
            "uat loadtest --compare: the same load direct to the mock upstream and through uat"
        );
        let _ = writeln!(o, "  load      {}", self.load);
        let _ = writeln!(
            o,
            "  direct    {}/chat/completions (built-in mock upstream)",
            self.mock_url
        );
        let _ = writeln!(
            o,
            "  uat       {}/v1/chat/completions ({}{}, provider kind openai -> the mock)",
            self.uat_url,
            if self.gw.mode == "child" {
                "`uat serve` child"
            } else {
                "in-process gateway"
            },
            self.gw.pid.map(|p| format!(" pid {p}")).unwrap_or_default()
        );
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "  {:<22}{:>14}{:>14}{:>12}",
            "", "direct", "through uat", "added"
        );
        let row = |o: &mut String, name: &str, a: String, b: String, c: String| {
            let _ = writeln!(o, "  {name:<22}{a:>14}{b:>14}{c:>12}");
        };
        row(
            &mut o,
            "requests",
            d.total().to_string(),
            t.total().to_string(),
            String::new(),
        );
        row(
            &mut o,
            "requests/s",
            format!("{:.1}", d.rps()),
            format!("{:.1}", t.rps()),
            String::new(),
        );
        row(
            &mut o,
            "errors (503 shed)",
            format!("{} ({})", d.errors, d.shed()),
            format!("{} ({})", t.errors, t.shed()),
            String::new(),
        );
        let latency_name = if t.service.is_empty() {
            "latency"
        } else {
            "latency*"
        };
        for (name, a, b) in [
            (latency_name, &d.latency, &t.latency),
            ("service time", &d.service, &t.service),
            ("first token", &d.ttft, &t.ttft),
        ] {
            if let (Some(x), Some(y)) = (summary(a), summary(b)) {
                for (i, q) in ["p50", "p95", "p99", "max"].iter().enumerate() {
                    row(
                        &mut o,
                        &format!("{name} {q} (ms)"),
                        format!("{:.3}", x[i]),
                        format!("{:.3}", y[i]),
                        format!("{:+.3}", y[i] - x[i]),
                    );
                }
            }
        }
        // One row per status or failure class seen on either side (a single
        // `200:13096 503:20 connect:5` cell overflowed its column).
        let classes: std::collections::BTreeSet<_> =
            d.by_class.keys().chain(t.by_class.keys()).collect();
        for class in classes {
            let count = |s: &Stats| s.by_class.get(class).copied().unwrap_or(0).to_string();
            row(
                &mut o,
                &format!("status {class}"),
                count(d),
                count(t),
                String::new(),
            );
        }
        let _ = writeln!(o);
        match (self.gw.mode, self.gateway_cpu_ms()) {
            ("child", Some(c)) => {
                let _ = writeln!(
                    o,
                    "  uat CPU / request     {c:.4} ms  ({:.0} ms utime+stime of the uat process over {} requests)",
                    self.gw.cpu.map(|c| c.as_secs_f64() * 1e3).unwrap_or(0.0),
                    t.total()
                );
            }
            (_, Some(c)) => {
                let _ = writeln!(
                    o,
                    "  uat CPU / request     ~{c:.4} ms  (in-process estimate: process CPU through uat minus direct)"
                );
            }
            _ => {}
        }
        if let (Some(a), Some(b)) = (
            per_request_ms(d.own_cpu, d.total()),
            per_request_ms(t.own_cpu, t.total()),
        ) {
            let _ = writeln!(
                o,
                "  loadgen+mock CPU/req  {a:.4} ms direct, {b:.4} ms through uat (this process)"
            );
        }
        if self.gw.rss_idle.is_some() || self.gw.rss_after.is_some() {
            let f = |v: Option<f64>| {
                v.map(|m| format!("{m:.1} MB"))
                    .unwrap_or_else(|| "-".into())
            };
            let _ = writeln!(
                o,
                "  uat RSS               idle {}, after the run {}",
                f(mb(self.gw.rss_idle)),
                f(mb(self.gw.rss_after))
            );
        }
        if let Some(s) = self.gw.startup {
            let _ = writeln!(
                o,
                "  uat start-up          {:.1} ms to /health, {:.1} ms to the first chat answer",
                s.as_secs_f64() * 1e3,
                self.gw
                    .first_chat
                    .map(|d| d.as_secs_f64() * 1e3)
                    .unwrap_or(f64::NAN)
            );
        }
        if let Some(e) = &self.gw.exit {
            let _ = writeln!(
                o,
                "  uat shutdown          {e}{}",
                self.gw
                    .shutdown
                    .map(|d| format!(" after {:.1} ms", d.as_secs_f64() * 1e3))
                    .unwrap_or_default()
            );
        }
        if !t.service.is_empty() {
            let _ = writeln!(
                o,
                "  * open loop: latency from the scheduled send time; service time from the actual send"
            );
        }
        o
    }
}
