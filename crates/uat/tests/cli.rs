//! Black-box tests of the `uat` binary: config check, serve + /health +
//! SIGTERM, and the load generator against the built-in mock upstream.
#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn uat() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_uat"));
    // Keep the developer's environment out of the configuration under test.
    for (k, _) in std::env::vars() {
        if k.starts_with("UAT_") && k.contains("__") {
            c.env_remove(k);
        }
    }
    c.env_remove("RUST_LOG");
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run uat")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("uat.toml");
    std::fs::write(&p, body).expect("write config");
    p
}

/// A `mock` provider, no probing, no cache, storage in `dir`.
fn serve_config(dir: &Path, port: u16) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
shutdown_grace = "5s"

[[providers]]
name = "mock"
kind = "mock"

[routing]
probe_local = false

[cache]
mode = "off"

[storage]
data_dir = "{}"
"#,
        dir.join("data").display()
    )
}

/// Minimal HTTP/1.1 GET with `Connection: close`: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -TERM {pid} failed");
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn config_check_prints_the_effective_config_with_secrets_masked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        dir.path(),
        r#"
[server]
listen = "127.0.0.1:4099"

[[providers]]
name = "remote"
kind = "openai"
base_url = "https://user:hunter2secret@llm.example.com/v1"
api_key_env = "REMOTE_KEY"

[storage]
database_url = "postgres://uat:pgs3cretpass@127.0.0.1:5432/uat"
"#,
    );
    let out = run(uat().arg("config").arg("check").arg("--config").arg(&cfg));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(
        stdout.contains("127.0.0.1:4099"),
        "the file's value is shown: {stdout}"
    );
    assert!(
        stdout.contains("REMOTE_KEY"),
        "the env var name is shown: {stdout}"
    );
    assert!(
        !stdout.contains("hunter2secret"),
        "provider secret leaked: {stdout}"
    );
    assert!(
        !stdout.contains("pgs3cretpass"),
        "database password leaked: {stdout}"
    );
    assert!(
        stdout.contains("****"),
        "masked values are marked: {stdout}"
    );

    // `--config` is global: accepted before the subcommand too.
    let before = run(uat().arg("--config").arg(&cfg).arg("config").arg("check"));
    assert!(before.status.success(), "stderr: {}", text(&before.stderr));
    assert_eq!(text(&before.stdout), stdout);
}

#[test]
fn config_check_rejects_a_bad_value_naming_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        dir.path(),
        r#"
[[providers]]
name = "a"
kind = "mock"

[[providers]]
name = "b"
kind = "mock"
timeout = "soon"
"#,
    );
    let out = run(uat().args(["config", "check", "--config"]).arg(&cfg));
    assert!(!out.status.success(), "a bad duration was accepted");
    let err = text(&out.stderr);
    assert!(
        err.contains("providers[1].timeout"),
        "path missing from: {err}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing printed on failure: {}",
        text(&out.stdout)
    );
}

#[test]
fn config_check_rejects_an_unknown_field_naming_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "[server]\nlisten_addr = \"127.0.0.1:1\"\n");
    let out = run(uat().args(["config", "check", "--config"]).arg(&cfg));
    assert!(!out.status.success(), "an unknown field was accepted");
    let err = text(&out.stderr);
    assert!(
        err.contains("server") && err.contains("listen_addr"),
        "path missing from: {err}"
    );
}

/// The signal handlers are installed before the port is bound, so a SIGTERM
/// that comes while start-up is still running (the port is bound, the
/// subsystems are starting) stops the server gracefully instead of killing it.
/// (They used to be installed by a task spawned when serving began: in CI a
/// SIGTERM right after the first answered request once killed the process.)
#[test]
fn sigterm_during_start_up_still_stops_gracefully() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), &serve_config(dir.path(), 0));
    let mut server = spawn_serve(&cfg, dir.path());
    // Logged once the port is bound, before the subsystems start.
    let (addr, _log) = common::logged_addr(&mut server.0, "port bound", Duration::from_secs(20));
    assert_ne!(addr.port(), 0);
    sigterm(server.0.id());
    let exit = wait_exit(&mut server.0, Duration::from_secs(10))
        .expect("uat did not stop within 10 s of SIGTERM");
    assert!(
        exit.success(),
        "a SIGTERM during start-up stops gracefully (exit 0), got {exit}"
    );
}

/// Logs written to a pipe (a file, journald, `kubectl logs`) are plain text,
/// without colour codes, and the listening line gives the port the OS chose
/// for `listen = "127.0.0.1:0"` (it used to repeat the configured `:0`).
#[test]
fn piped_logs_are_plain_text_and_name_the_bound_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), &serve_config(dir.path(), 0));
    let mut server = spawn_serve(&cfg, dir.path());
    let (addr, log) = common::listening_addr(&mut server.0, Duration::from_secs(20));
    assert_ne!(addr.port(), 0);
    let log = common::text(&log);
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in piped logs: {log:?}"
    );
    assert!(log.contains(&format!("addr={addr}")), "{log}");
}

#[test]
fn serve_answers_health_on_an_ephemeral_port_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), &serve_config(dir.path(), 0));
    let (mut server, addr) = start(&cfg, dir.path());
    assert_ne!(addr.port(), 0, "the log gives the port the OS chose");

    let (status, body) = http_get(addr, "/no/such/route").expect("request an unknown route");
    assert_eq!(status, 404);
    assert!(
        body.contains("\"error\""),
        "OpenAI error shape expected: {body}"
    );
    // `uat health`, the image's HEALTHCHECK: 0 on a 2xx, 1 otherwise.
    let probe = |url: String| run(uat().args(["health", "--url", &url]));
    let out = probe(format!("http://{addr}/health"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("200 OK"),
        "{}",
        text(&out.stdout)
    );
    let out = probe(format!("http://{addr}/no/such/route"));
    assert!(!out.status.success(), "a 404 is not healthy");
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));

    sigterm(server.0.id());
    let exit = wait_exit(&mut server.0, Duration::from_secs(10))
        .expect("uat did not stop within 10 s of SIGTERM");
    assert!(exit.success(), "graceful stop exits 0, got {exit}");
    assert!(
        http_get(addr, "/health").is_err(),
        "the port is closed after shutdown"
    );
    let out = probe(format!("http://{addr}/health"));
    assert!(!out.status.success(), "nothing listens");
    assert!(
        text(&out.stderr).contains("no answer"),
        "{}",
        text(&out.stderr)
    );
}

/// Without `--url`, `uat health` probes this host on the configured port
/// (`/ready` with `--ready`).
#[test]
fn health_probes_the_configured_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let cfg = write_config(dir.path(), &serve_config(dir.path(), port));
    let out = run(uat()
        .args(["health", "--timeout", "1s", "--config"])
        .arg(&cfg));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("http://127.0.0.1:{port}/health: no answer")),
        "{err}"
    );
    let out = run(uat().args(["health", "--ready", "--config"]).arg(&cfg));
    assert!(
        text(&out.stderr).contains(&format!("127.0.0.1:{port}/ready")),
        "{}",
        text(&out.stderr)
    );
}

fn loadtest_json(args: &[&str]) -> serde_json::Value {
    let out = run(uat().arg("loadtest").args(args).arg("--json"));
    assert!(
        out.status.success(),
        "uat loadtest {args:?} failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
}

#[test]
fn loadtest_closed_loop_against_the_mock_counts_every_request() {
    let v = loadtest_json(&[
        "--mock",
        "--concurrency",
        "4",
        "--requests",
        "300",
        "--duration",
        "20s",
        "--warmup",
        "0s",
    ]);
    assert_eq!(v["requests"], 300, "{v}");
    assert_eq!(v["ok"], 300, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["by_status"]["200"], 300, "{v}");
    let p50 = v["latency_ms"]["p50"].as_f64().expect("p50");
    let max = v["latency_ms"]["max"].as_f64().expect("max");
    assert!(p50 > 0.0 && p50 <= max, "{v}");
    assert!(
        v["ttft_ms"].is_null(),
        "no first-token time without streaming: {v}"
    );
}

#[test]
fn loadtest_streams_measure_time_to_first_token() {
    let v = loadtest_json(&[
        "--mock",
        "--stream",
        "--mock-chunks",
        "5",
        "--concurrency",
        "2",
        "--requests",
        "50",
        "--warmup",
        "0s",
    ]);
    assert_eq!(v["ok"], 50, "{v}");
    assert_eq!(v["stream"], true, "{v}");
    let ttft = v["ttft_ms"]["p50"].as_f64().expect("ttft p50");
    let total = v["latency_ms"]["p50"].as_f64().expect("latency p50");
    assert!(
        ttft > 0.0 && ttft <= v["latency_ms"]["max"].as_f64().expect("max"),
        "{v}"
    );
    assert!(total > 0.0, "{v}");
}

#[test]
fn loadtest_open_loop_sends_on_schedule_and_counts_mock_latency() {
    // 100 req/s for 1 s against a mock that takes 20 ms: ~100 requests, each
    // at least 20 ms from its scheduled time.
    let v = loadtest_json(&[
        "--mock",
        "--rate",
        "100",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--mock-latency",
        "20ms",
    ]);
    let n = v["requests"].as_u64().expect("requests");
    assert_eq!(n, 100, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["mode"], "open", "{v}");
    let p50 = v["latency_ms"]["p50"].as_f64().expect("p50");
    assert!(p50 >= 20.0, "mock latency must show: {v}");
    let svc = v["service_time_ms"]["p50"].as_f64().expect("service p50");
    assert!(svc >= 20.0 && svc <= p50 + 0.01, "{v}");
}

/// Answers every request on every keep-alive connection with a 503, on
/// threads of its own; returns its base URL.
fn always_503() -> String {
    use std::io::BufRead;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let Ok(mut out) = conn.try_clone() else {
                    return;
                };
                let mut reader = std::io::BufReader::new(conn);
                loop {
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let reply = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\nno";
                    if out.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// Every request answered 503: the run counts them by status, keeps them out
/// of the latency percentiles (a fast 503 pulled p50 down to 0.9 ms when real
/// answers took 100 ms), prints its report, and exits non-zero: no request
/// succeeded (it used to exit 0).
#[test]
fn loadtest_counts_errors_by_status() {
    let url = always_503();
    let out = run(uat().args([
        "loadtest",
        "--url",
        &url,
        "--concurrency",
        "2",
        "--requests",
        "20",
        "--duration",
        "20s",
        "--warmup",
        "0s",
        "--json",
    ]));
    let err = text(&out.stderr);
    assert!(!out.status.success(), "no request succeeded: {err}");
    assert!(err.contains("no request succeeded"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)));
    assert_eq!(v["requests"], 20, "{v}");
    assert_eq!(v["ok"], 0, "{v}");
    assert_eq!(v["by_status"]["503"], 20, "{v}");
    assert_eq!(v["error_rate"], 1.0, "{v}");
    assert!(v["latency_ms"].is_null(), "failures are not latency: {v}");
    assert!(v["error_latency_ms"]["p50"].as_f64().is_some(), "{v}");
}

/// Nothing listens on the port: one probe request finds it and the run
/// fails at once, naming the target, instead of spinning on refused
/// connections for its warm-up and duration and exiting 0.
#[test]
fn loadtest_fails_at_once_when_nothing_listens() {
    // Bound, not listening, so no other test can take the port meanwhile.
    let closed = tokio::net::TcpSocket::new_v4().expect("socket");
    closed
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let port = closed.local_addr().expect("local addr").port();
    let url = format!("http://127.0.0.1:{port}");
    let out = run(uat().args([
        "loadtest",
        "--url",
        &url,
        "--concurrency",
        "2",
        "--requests",
        "20",
        "--duration",
        "5s",
        "--warmup",
        "1s",
        "--json",
    ]));
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("cannot connect to {url}")), "{err}");
    assert!(out.stdout.is_empty(), "no run: {}", text(&out.stdout));
}

/// Under a small soft open-file limit (`ulimit -Sn 128`, many a shell's
/// default is 1024) the load generator raises it to the hard limit: 100
/// connections to the in-process mock hold 200 sockets, which used to fail
/// as connect errors.
#[test]
fn loadtest_raises_a_small_open_file_limit() {
    let hard = Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .expect("sh");
    let hard = text(&hard.stdout);
    if hard.trim().parse::<u64>().is_ok_and(|h| h < 1024) {
        eprintln!("skipped: the hard open-file limit is {hard}");
        return;
    }
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "ulimit -Sn 128 && exec \"$0\" loadtest --mock -c 100 -n 300 --duration 30s --warmup 0s --json",
        env!("CARGO_BIN_EXE_uat"),
    ]);
    for (k, _) in std::env::vars() {
        if k.starts_with("UAT_") {
            cmd.env_remove(k);
        }
    }
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)));
    assert_eq!(v["ok"], 300, "{v}");
}

/// Flags whose schedule would overflow the clock are refused up front
/// (an `--duration` of 300000000000y, or a `--rate` so low that the second
/// request is due in 1e20 s, panicked the run), with the flag named.
#[test]
fn loadtest_refuses_durations_and_rates_past_the_clock() {
    for (args, flag) in [
        (["--duration", "300000000000y"], "--duration"),
        (["--warmup", "300000000000y"], "--warmup"),
        (["--timeout", "11y"], "--timeout"),
        (["--rate", "1e-20"], "--rate"),
    ] {
        let out = run(uat().args(["loadtest", "--mock"]).args(args));
        assert!(!out.status.success(), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn loadtest_rejects_missing_target() {
    let out = run(uat().args(["loadtest", "--duration", "1s"]));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--url"), "{}", text(&out.stderr));
}

#[test]
fn loadtest_compare_runs_the_same_load_direct_and_through_a_uat_child() {
    let v = loadtest_json(&[
        "--compare",
        "--concurrency",
        "4",
        "--requests",
        "200",
        "--duration",
        "30s",
        "--warmup",
        "0s",
    ]);
    for side in ["direct", "uat"] {
        assert_eq!(v[side]["requests"], 200, "{side}: {v}");
        assert_eq!(v[side]["ok"], 200, "{side}: {v}");
        assert!(
            v[side]["latency_ms"]["p50"]
                .as_f64()
                .is_some_and(|x| x > 0.0),
            "{side}: {v}"
        );
    }
    let gw = &v["gateway"];
    assert_eq!(gw["mode"], "child", "{v}");
    assert!(gw["pid"].as_u64().is_some(), "{v}");
    assert!(
        gw["cpu_ms_per_request"].as_f64().is_some_and(|c| c >= 0.0),
        "{v}"
    );
    assert!(gw["rss_idle_mb"].as_f64().is_some_and(|m| m > 1.0), "{v}");
    assert!(
        gw["startup_to_health_ms"].as_f64().is_some_and(|m| m > 0.0),
        "{v}"
    );
    assert!(
        gw["exit"]
            .as_str()
            .is_some_and(|e| e.contains("exit status: 0")),
        "the child stops cleanly on SIGTERM: {v}"
    );
    assert!(v["added"]["latency_ms"]["p50"].as_f64().is_some(), "{v}");
}

/// `cmd loadtest --compare` of five requests on one worker, which must
/// succeed; its JSON report.
fn compare_five(cmd: &mut Command) -> serde_json::Value {
    let out = run(cmd.args([
        "loadtest",
        "--compare",
        "-c",
        "1",
        "-n",
        "5",
        "--duration",
        "30s",
        "--warmup",
        "0s",
        "--json",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
}

/// The `uat serve` child of `--compare` is configured by its own file only:
/// the caller's `UAT_*` environment (a deployment's `UAT_SERVER__LISTEN` and
/// `UAT_STORAGE__DATA_DIR=/data`, say) used to reach it, moving it onto the
/// running server's port and into the production data directory.
#[test]
fn loadtest_compare_keeps_the_callers_uat_environment_from_its_gateway() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prod = dir.path().join("production-data");
    let v = compare_five(
        uat()
            .env("UAT_SERVER__LISTEN", "127.0.0.1:1")
            .env("UAT_STORAGE__DATA_DIR", &prod),
    );
    assert_eq!(v["uat"]["ok"], 5, "{v}");
    assert!(
        !prod.exists(),
        "the gateway wrote into UAT_STORAGE__DATA_DIR"
    );
}

#[test]
fn loadtest_compare_streams_through_an_in_process_gateway() {
    let v = loadtest_json(&[
        "--compare",
        "--in-process",
        "--stream",
        "--concurrency",
        "2",
        "--requests",
        "50",
        "--duration",
        "30s",
        "--warmup",
        "0s",
    ]);
    assert_eq!(v["gateway"]["mode"], "in-process", "{v}");
    for side in ["direct", "uat"] {
        assert_eq!(v[side]["ok"], 50, "{side}: {v}");
        assert!(
            v[side]["ttft_ms"]["p50"].as_f64().is_some_and(|x| x > 0.0),
            "{side}: {v}"
        );
    }
    assert!(v["added"]["ttft_ms"]["p50"].as_f64().is_some(), "{v}");
}

/// Minimal HTTP/1.1 POST of a JSON body with `Connection: close`:
/// (status, the head in lower case, body).
fn http_post(addr: SocketAddr, path: &str, body: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_ascii_lowercase(), body.to_string()))
}

/// Spawns `uat serve` (stderr piped: `start` reads the bound address from it).
fn spawn_serve(cfg: &Path, dir: &Path) -> Server {
    Server(
        uat()
            .arg("serve")
            .arg("--config")
            .arg(cfg)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn uat serve"),
    )
}

/// Starts `uat serve` (its config listening on port 0) and waits for
/// `/health`; returns it and the address it bound.
fn start(cfg: &Path, dir: &Path) -> (Server, SocketAddr) {
    let mut server = spawn_serve(cfg, dir);
    let (addr, log) = common::listening_addr(&mut server.0, Duration::from_secs(20));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!(
                "uat serve exited early with {status}:\n{}",
                common::text(&log)
            );
        }
        if matches!(http_get(addr, "/health"), Ok((200, _))) {
            return (server, addr);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("uat serve never answered /health:\n{}", common::text(&log));
}

#[test]
fn cache_writes_still_gathered_reach_l3_on_sigterm_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    // L3 gathers for 10 s: only the flush at shutdown can have written the entry.
    let body = serve_config(dir.path(), 0).replace(
        "[cache]\nmode = \"off\"\n",
        "[cache]\nmode = \"deterministic\"\n[cache.l3]\nenabled = true\nwrite_delay = \"10s\"\n",
    );
    let cfg = write_config(dir.path(), &body);
    let chat = r#"{"model":"mock-model","temperature":0,"messages":[{"role":"user","content":"persist me"}]}"#;

    let (mut first, addr) = start(&cfg, dir.path());
    let (status, head, answer) = http_post(addr, "/v1/chat/completions", chat).expect("chat");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("x-uat-cache: miss"), "{head}");
    sigterm(first.0.id());
    let exit = wait_exit(&mut first.0, Duration::from_secs(10))
        .expect("uat did not stop within 10 s of SIGTERM");
    assert!(exit.success(), "graceful stop exits 0, got {exit}");

    let (_second, addr) = start(&cfg, dir.path());
    let (status, head, again) = http_post(addr, "/v1/chat/completions", chat).expect("chat");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("x-uat-cache: hit-l3"),
        "the entry gathered for L3 was lost at shutdown: {head}"
    );
    assert_eq!(again, answer);
}

/// A SIGINT while start-up waits for an unreachable PostgreSQL stops it at
/// once (it used to be ignored until the pool gave up, 12 s later).
#[test]
fn sigint_while_the_database_is_unreachable_stops_start_up_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), &serve_config(dir.path(), 0));
    let mut server = Server(
        uat()
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .args(["--database-url", "postgres://u@127.0.0.1:1/db"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn uat serve"),
    );
    let (_, log) = common::logged_addr(&mut server.0, "port bound", Duration::from_secs(20));
    let ok = Command::new("kill")
        .args(["-INT", &server.0.id().to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -INT failed");
    // A liveness bound, far above the few milliseconds it takes.
    let exit = wait_exit(&mut server.0, Duration::from_secs(5)).unwrap_or_else(|| {
        panic!(
            "uat did not stop within 5 s of SIGINT:\n{}",
            common::text(&log)
        )
    });
    // Let the log reader catch up with the last lines.
    std::thread::sleep(Duration::from_millis(100));
    assert!(exit.success(), "{exit}: {}", common::text(&log));
    assert!(
        common::text(&log).contains("interrupted during start-up"),
        "{}",
        common::text(&log)
    );
}

/// During the drain, a second SIGTERM exits at once (143) instead of waiting
/// for the in-flight requests up to `shutdown_grace`.
#[test]
fn a_second_sigterm_during_the_drain_exits_at_once() {
    use std::os::unix::process::ExitStatusExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let body =
        serve_config(dir.path(), 0).replace("shutdown_grace = \"5s\"", "shutdown_grace = \"60s\"");
    let cfg = write_config(dir.path(), &body);
    let mut server = spawn_serve(&cfg, dir.path());
    let (addr, log) = common::listening_addr(&mut server.0, Duration::from_secs(20));
    // A request in flight: its body is still coming, so the drain waits.
    let mut held = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    write!(
        held,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\":"
    )
    .expect("send the head");
    held.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(200));
    sigterm(server.0.id());
    let until = Instant::now() + Duration::from_secs(10);
    while !common::text(&log).contains("a second signal exits") {
        assert!(
            Instant::now() < until,
            "no shutdown:\n{}",
            common::text(&log)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        matches!(server.0.try_wait(), Ok(None)),
        "the drain waits for the request in flight:\n{}",
        common::text(&log)
    );
    sigterm(server.0.id());
    let exit = wait_exit(&mut server.0, Duration::from_secs(5)).unwrap_or_else(|| {
        panic!(
            "uat did not exit within 5 s of a second SIGTERM:\n{}",
            common::text(&log)
        )
    });
    assert_eq!(exit.code(), Some(143), "{exit:?} {:?}", exit.signal());
    drop(held);
}

/// A port in use and a missing config file say their cause once (the I/O
/// error was both in the message and chained as its source, so it printed
/// twice: `... in use (os error 98): ... in use (os error 98)`).
#[test]
fn start_up_errors_name_their_cause_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let cfg = write_config(dir.path(), &serve_config(dir.path(), port));
    let out = run(uat().args(["serve", "--config"]).arg(&cfg));
    assert!(!out.status.success(), "serve ran on a port in use");
    let err = text(&out.stderr);
    assert!(err.contains("cannot listen on"), "{err}");
    assert_eq!(err.matches("os error 98").count(), 1, "{err}");
    let missing = dir.path().join("nowhere.toml");
    let out = run(uat().args(["config", "check", "--config"]).arg(&missing));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("cannot read config file"), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}

/// Options that do nothing in the mode asked for are refused by the parser
/// (exit 2) instead of being silently ignored.
#[test]
fn loadtest_refuses_options_its_mode_ignores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "");
    let url = ["--url", "http://127.0.0.1:1"];
    let cases: &[(&[&str], &str)] = &[
        (&["--config", "CFG", "loadtest", "--mock"], "--config"),
        (&["loadtest", "--mock", "--config", "CFG"], "--config"),
        (
            &["--config", "CFG", "bench", "vector", "--n", "1"],
            "--config",
        ),
        (&["loadtest", "--mock", "--compare"], "--compare"),
        (&["loadtest", "--mock", "--in-process"], "--in-process"),
        (
            &["loadtest", "--mock", "--max-in-flight", "8"],
            "--max-in-flight",
        ),
        (
            &["loadtest", "--mock", "--gateway-log-level", "debug"],
            "--gateway-log-level",
        ),
        (
            &["loadtest", "--mock", "--uat-bin", "/bin/true"],
            "--uat-bin",
        ),
        (
            &[
                "loadtest",
                "--compare",
                "--in-process",
                "--uat-bin",
                "/bin/true",
            ],
            "--uat-bin",
        ),
        (
            &["loadtest", url[0], url[1], "--mock-latency", "5ms"],
            "--mock-latency",
        ),
        (
            &["loadtest", url[0], url[1], "--mock-chunks", "3"],
            "--mock-chunks",
        ),
        (&["loadtest", "--mock", "--http2"], "--http2"),
        (&["loadtest", "--compare", "--http2"], "--http2"),
    ];
    for (args, flag) in cases {
        let out = run(uat().args(args.iter().map(|a| {
            if *a == "CFG" {
                cfg.as_os_str()
            } else {
                std::ffi::OsStr::new(a)
            }
        })));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    // The same options in the mode that uses them still parse: `--help`
    // after them exits 0 without running anything.
    for args in [
        &[
            "loadtest",
            "--mock",
            "--mock-latency",
            "5ms",
            "--mock-chunks",
            "3",
            "--help",
        ][..],
        &[
            "loadtest",
            "--compare",
            "--in-process",
            "--max-in-flight",
            "8",
            "--gateway-log-level",
            "debug",
            "--mock-latency",
            "5ms",
            "--help",
        ],
        &["loadtest", "--compare", "--uat-bin", "/bin/true", "--help"],
        &[
            "loadtest",
            "--url",
            "https://127.0.0.1:1",
            "--http2",
            "--help",
        ],
    ] {
        let out = run(uat().args(args));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

/// `--http2` against a plain-http URL would do nothing (reqwest negotiates
/// HTTP/2 only through TLS ALPN): refused with the reason.
#[test]
fn loadtest_http2_needs_an_https_url() {
    let out = run(uat().args(["loadtest", "--url", "http://127.0.0.1:1", "--http2"]));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("--http2") && err.contains("https"), "{err}");
}

/// `uat bench embed` without `--sentences` uses the sentences built into the
/// binary: it used to read `../shared/fixtures/embeddings/sentences.json`
/// relative to the working directory, outside the repository. With a model
/// folder that does not exist, the run now gets as far as the model.
#[test]
fn bench_embed_has_its_sentences_built_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(uat()
        .current_dir(dir.path())
        .args(["bench", "embed", "--model-dir"])
        .arg(dir.path().join("no-model")));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(!err.contains("sentences"), "{err}");
    assert!(err.contains("no-model"), "{err}");
    // An explicit file still overrides the built-in ones.
    let out = run(uat()
        .current_dir(dir.path())
        .args([
            "bench",
            "embed",
            "--sentences",
            "missing.json",
            "--model-dir",
        ])
        .arg(dir.path().join("no-model")));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot read sentences from missing.json"),
        "{err}"
    );
}

/// `--compare` stops its `uat serve` child with SIGTERM sent directly: it ran
/// the external `kill` program, missing from slim images, and then waited
/// 10 s and killed the child. No `kill` on the PATH here.
#[test]
fn loadtest_compare_stops_its_gateway_without_a_kill_program() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = compare_five(uat().env("PATH", dir.path()));
    let gw = &v["gateway"];
    assert!(
        gw["exit"]
            .as_str()
            .is_some_and(|e| e.contains("exit status: 0")),
        "the child stops cleanly on SIGTERM: {v}"
    );
    assert!(
        gw["shutdown_ms"].as_f64().is_some_and(|ms| ms < 5_000.0),
        "{v}"
    );
}

/// `config check` reads each local model's folder as a load would (not the
/// weights): an eager model that cannot load would stop `serve` at start-up,
/// so it fails the check naming the field and the missing piece; a lazy one
/// is a warning.
#[test]
fn config_check_reads_the_local_model_folders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("minilm");
    std::fs::create_dir_all(model.join("1_Pooling")).expect("mkdir");
    let files = [
        (
            "modules.json",
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#,
        ),
        (
            "1_Pooling/config.json",
            r#"{"word_embedding_dimension": 384, "pooling_mode_mean_tokens": true}"#,
        ),
        (
            "config.json",
            r#"{"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
                "num_attention_heads": 12, "intermediate_size": 1536,
                "max_position_embeddings": 512, "model_type": "bert"}"#,
        ),
        ("tokenizer.json", "{}"),
    ];
    for (name, body) in files {
        std::fs::write(model.join(name), body).expect("write");
    }
    let check = |path: &Path, eager: bool| {
        let cfg = write_config(
            dir.path(),
            &format!(
                "[[embeddings.models]]\nname = \"minilm\"\npath = {:?}\neager = {eager}\n",
                path.display().to_string()
            ),
        );
        run(uat().args(["config", "check", "--config"]).arg(&cfg))
    };
    let missing = dir.path().join("nowhere");
    let out = check(&missing, true);
    assert!(
        !out.status.success(),
        "an eager model with no folder passed"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("embeddings.models[0].path") && err.contains("no such folder"),
        "{err}"
    );
    let out = check(&missing, false);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("warning: embeddings.models[0].path"),
        "a lazy model's missing folder is a warning: {err}"
    );
    // The weights are missing.
    let out = check(&model, true);
    assert!(!out.status.success(), "a folder without weights passed");
    assert!(
        text(&out.stderr).contains("model.safetensors"),
        "{}",
        text(&out.stderr)
    );
    // Weights that are no safetensors file.
    std::fs::write(model.join("model.safetensors"), b"").expect("write");
    let out = check(&model, true);
    assert!(!out.status.success(), "an empty weights file passed");
    assert!(
        text(&out.stderr).contains("safetensors header"),
        "{}",
        text(&out.stderr)
    );
    // A safetensors header (one f32 tensor) and its data.
    let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header);
    st.extend_from_slice(&[0; 4]);
    std::fs::write(model.join("model.safetensors"), st).expect("write");
    let out = check(&model, true);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
}
