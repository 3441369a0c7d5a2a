//! The `uat` binary: parses the command line, loads the configuration and
//! hands over to the library crates. Wiring and exit codes only.

mod bench;
mod cli;
mod loadtest;

use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command, ConfigCommand};
use std::process::ExitCode;
use std::time::Duration;
use uat_config::{Config, Overrides};

/// How long the runtime's shutdown waits for work still running on its
/// blocking pool (a large vector upsert, a file read) once `uat serve` has
/// stopped. Dropping the runtime waited for it without limit, past the
/// termination window of an orchestrator (Kubernetes' default is 30 s).
const BLOCKING_SHUTDOWN_LIMIT: Duration = Duration::from_secs(3);

/// mimalloc instead of glibc's malloc: on the memory benchmark's 50-client
/// phases glibc spent a fifth of the CPU in malloc/free (`malloc_consolidate`
/// alone 7%), and list and keyword throughput rose 15-35% with mimalloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli::check_unused_config(&cli) {
        e.exit();
    }
    let result = match cli.command {
        Command::Serve(ref args) => {
            let overrides = Overrides {
                listen: args.listen.clone(),
                data_dir: args.data_dir.clone(),
                database_url: args.database_url.clone(),
            };
            runtime().and_then(|rt| {
                block_on_bounded(rt, serve(cli.config.as_deref(), &overrides), |served| {
                    match served {
                        // Start-up work cut short may still sit on the
                        // blocking pool (a connect, a file read): do not wait
                        // for it.
                        Ok(Served::Interrupted) => Duration::from_millis(500),
                        _ => BLOCKING_SHUTDOWN_LIMIT,
                    }
                })
                .map(|_| ())
            })
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => config_check(cli.config.as_deref()),
        Command::Health(ref args) => health(cli.config.as_deref(), args),
        Command::Bench { ref which } => bench::run(which),
        Command::Loadtest(ref args) => runtime()
            .and_then(|rt| block_on_bounded(rt, loadtest::run(args), |_| BLOCKING_SHUTDOWN_LIMIT)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs `fut` to completion, then shuts the runtime down waiting at most
/// `limit(&output)` for its blocking pool (tasks still running there are left
/// to end with the process) instead of without limit as dropping it does.
fn block_on_bounded<F: std::future::Future>(
    rt: tokio::runtime::Runtime,
    fut: F,
    limit: impl FnOnce(&F::Output) -> Duration,
) -> F::Output {
    let out = rt.block_on(fut);
    rt.shutdown_timeout(limit(&out));
    out
}

fn config_check(path: Option<&std::path::Path>) -> anyhow::Result<()> {
    let (cfg, source) =
        Config::load(path, &Overrides::default()).context("invalid configuration")?;
    check_model_folders(&cfg)?;
    match source {
        uat_config::Source::File(p) => println!("# configuration OK: {}", p.display()),
        uat_config::Source::Defaults => {
            println!("# configuration OK: built-in defaults (no uat.toml found)")
        }
    }
    print!("{}", cfg.to_masked_toml());
    Ok(())
}

/// `uat health`: one GET of the server's `/health` (or `/ready`, or
/// `--url`) on this host, for a container HEALTHCHECK (the image has no
/// curl). The address is the configured `server.listen` (file and `UAT_*`
/// environment; a `serve --listen` flag is not seen), a wildcard one on
/// loopback.
fn health(path: Option<&std::path::Path>, args: &cli::HealthArgs) -> anyhow::Result<()> {
    let url = match &args.url {
        Some(u) => u.clone(),
        None => {
            let (cfg, _) =
                Config::load(path, &Overrides::default()).context("invalid configuration")?;
            let addr: std::net::SocketAddr = cfg.server.listen.parse().with_context(|| {
                format!("server.listen `{}` is not an address", cfg.server.listen)
            })?;
            let route = if args.ready { "ready" } else { "health" };
            // A wildcard address is reached on loopback; a given one as it is.
            let ip = if addr.ip().is_unspecified() {
                match addr {
                    std::net::SocketAddr::V4(_) => std::net::IpAddr::from([127, 0, 0, 1]),
                    std::net::SocketAddr::V6(_) => {
                        std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
                    }
                }
            } else {
                addr.ip()
            };
            format!(
                "http://{}/{route}",
                std::net::SocketAddr::new(ip, addr.port())
            )
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let status = rt.block_on(async {
        // Never through an HTTP_PROXY of the environment: this host's port.
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(args.timeout)
            .build()
            .context("cannot build the HTTP client")?;
        let resp = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("{url}: no answer"))?;
        anyhow::Ok(resp.status())
    })?;
    if !status.is_success() {
        anyhow::bail!("{url}: {status}");
    }
    println!("{url}: {status}");
    Ok(())
}

/// The local embedding models' folders, read as far as a load would
/// without loading the weights: an `eager` model that cannot load stops
/// `serve` at start-up, so it fails the check; a lazy one would fail its
/// first request, so it is a warning (the folder may be mounted later).
fn check_model_folders(cfg: &Config) -> anyhow::Result<()> {
    for (i, m) in cfg.embeddings.models.iter().enumerate() {
        let Err(e) = uat_embed::FolderSpec::check(&m.path) else {
            continue;
        };
        if m.eager {
            anyhow::bail!(
                "invalid configuration: embeddings.models[{i}].path: model `{}` is eager (loaded at start-up) but cannot be loaded: {e}",
                m.name
            );
        }
        eprintln!(
            "warning: embeddings.models[{i}].path: model `{}` cannot be loaded (its first request will fail): {e}",
            m.name
        );
    }
    Ok(())
}

/// How `uat serve` ended without an error.
enum Served {
    /// Served, then stopped by a signal and drained.
    Stopped,
    /// A signal came while the subsystems were starting; nothing was served.
    Interrupted,
}

async fn serve(path: Option<&std::path::Path>, overrides: &Overrides) -> anyhow::Result<Served> {
    let (cfg, source) = Config::load(path, overrides).context("invalid configuration")?;
    let format = match cfg.server.log_format {
        uat_config::LogFormat::Text => uat_telemetry::LogFormat::Text,
        uat_config::LogFormat::Json => uat_telemetry::LogFormat::Json,
    };
    uat_telemetry::init_tracing(&cfg.server.log_level, format);
    tracing::info!(?source, "configuration loaded");
    let listen = cfg.server.listen.clone();
    let opts = uat_server::ServeOptions::from(&cfg.server);
    let wanted = cfg.server.max_connections as u64 + cfg.server.max_in_flight as u64 + 256;
    match uat_server::raise_fd_limit() {
        Some(limit) if limit < wanted => tracing::warn!(
            limit,
            max_connections = cfg.server.max_connections,
            "the open-file limit is below server.max_connections + max_in_flight + 256: \
             past it new connections fail; raise it (ulimit -n) or lower max_connections"
        ),
        Some(limit) => tracing::debug!(limit, "open-file limit"),
        None => {}
    }
    // Before anything else runs: a SIGTERM from here on stops gracefully
    // (and a second one exits at once).
    let signals = stop_signals();
    let listener = uat_server::bind(&listen).await?;
    // The bound address: with port 0 in `listen`, the port the OS chose.
    let addr = listener
        .local_addr()
        .map_or_else(|_| listen.clone(), |a| a.to_string());
    tracing::info!(%addr, "port bound, starting the subsystems");
    // A signal while the subsystems start (say, PostgreSQL unreachable and
    // the pool retrying until its timeout) stops the start-up at once.
    let state = tokio::select! {
        biased;
        () = stopped(signals.clone()) => {
            tracing::warn!("interrupted during start-up, exiting");
            return Ok(Served::Interrupted);
        }
        built = uat_server::build(cfg) => built?,
    };
    let app = uat_server::app(state.clone());
    tracing::info!(%addr, "uat is listening");
    uat_server::serve(listener, app, stopped(signals), opts)
        .await
        .context("server error")?;
    // Before the process ends, at once (network and disk): cache writes
    // still gathered for L2/L3 go out, the keys' spend is written, and the
    // vector collections with WAL records are snapshotted.
    let flush = async {
        if let Some(cache) = state.cache.tiered() {
            cache.flush(std::time::Duration::from_secs(2)).await;
        }
    };
    // The keys' spend not written yet (written every second otherwise),
    // and the ledger closed.
    let spend = async {
        if let Some(spend) = &state.spend {
            spend.close(std::time::Duration::from_secs(2)).await;
        }
    };
    tokio::join!(flush, spend, snapshot_vectors(state.vector.store().clone()));
    tracing::info!("uat stopped");
    Ok(Served::Stopped)
}

/// How long after the drain `uat serve` goes on starting snapshots of the
/// vector collections whose WAL holds records (one already running
/// finishes). The drain may have used `server.shutdown_grace` (30 s) of the
/// orchestrator's grace period (Kubernetes' default is 30 s, the manifests
/// in deploy/k8s give 45 s), after which the process is killed. A kill
/// during a snapshot loses only the work (it is written to a temporary file
/// and renamed, the WAL emptied after), and a collection not reached is
/// replayed from its WAL at the next start, as without these snapshots: the
/// budget bounds the wait and the work thrown away, not safety.
const VECTOR_SNAPSHOT_BUDGET: Duration = Duration::from_secs(10);

/// Snapshots the vector collections whose WAL holds records, so the next
/// start replays nothing, within [`VECTOR_SNAPSHOT_BUDGET`]. Runs on the
/// blocking pool and is awaited: the runtime's shutdown would give it only
/// [`BLOCKING_SHUTDOWN_LIMIT`]. The store logs each collection.
async fn snapshot_vectors(store: std::sync::Arc<uat_vector::VectorStore>) {
    use uat_vector::SnapshotOutcome as O;
    let started = std::time::Instant::now();
    let deadline = started + VECTOR_SNAPSHOT_BUDGET;
    let report = match tokio::task::spawn_blocking(move || store.snapshot_dirty(deadline)).await {
        Ok(report) => report,
        Err(e) => {
            tracing::error!(error = %e, "the vector store's shutdown snapshots panicked");
            return;
        }
    };
    let count = |f: fn(&O) -> bool| report.iter().filter(|r| f(&r.outcome)).count();
    let snapshotted = count(|o| matches!(o, O::Snapshotted { .. }));
    let failed = count(|o| matches!(o, O::Failed(_)));
    let not_reached = count(|o| matches!(o, O::NotReached));
    if snapshotted + failed + not_reached > 0 {
        tracing::info!(
            snapshotted,
            failed,
            not_reached,
            clean = report.len() - snapshotted - failed - not_reached,
            seconds = started.elapsed().as_secs_f64(),
            "vector collections snapshotted for the next start"
        );
    }
}

/// Resolves once [`stop_signals`] has seen a signal (never, when it could
/// not listen for any).
async fn stopped(mut signals: tokio::sync::watch::Receiver<bool>) {
    if signals.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Listens for SIGINT and SIGTERM (Ctrl-C off Unix): the first one sets the
/// returned flag, which stops the server gracefully; a second one exits at
/// once without waiting for the drain, with 130 (SIGINT) or 143 (SIGTERM).
///
/// The handlers are installed when this is called, not when a future is first
/// polled: a SIGTERM that came before a listening task's first poll used to
/// kill the process with the default action instead of stopping it
/// gracefully (seen in CI under load, right after the first answered
/// request). Must be called inside the runtime.
fn stop_signals() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let on_signal = move |code: i32| {
        if *tx.borrow() {
            tracing::warn!("second signal during the shutdown, exiting at once");
            std::process::exit(code);
        }
        tracing::info!("stopping; a second signal exits without waiting");
        tx.send_replace(true);
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for {name}");
                None
            }
        };
        let mut int = listen(SignalKind::interrupt(), "SIGINT");
        let mut term = listen(SignalKind::terminate(), "SIGTERM");
        async fn recv(s: &mut Option<Signal>) -> Option<()> {
            match s {
                Some(s) => s.recv().await,
                None => None,
            }
        }
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = recv(&mut int) => on_signal(130),
                    Some(()) = recv(&mut term) => on_signal(143),
                    else => break,
                }
            }
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        loop {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::warn!(error = %e, "cannot listen for Ctrl-C");
                break;
            }
            on_signal(130);
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blocking task still running when the command's future ends does not
    /// hold up the exit past the limit.
    #[test]
    fn the_exit_does_not_wait_for_the_blocking_pool_past_its_limit() -> anyhow::Result<()> {
        let rt = runtime()?;
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let began = std::time::Instant::now();
        let out = block_on_bounded(
            rt,
            async move {
                // Detached: like a handler's upsert whose request was dropped.
                drop(tokio::task::spawn_blocking(move || {
                    let _ = started_tx.send(());
                    std::thread::sleep(Duration::from_secs(30));
                }));
                tokio::task::spawn_blocking(move || started_rx.recv())
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r.map_err(anyhow::Error::from))
                    .map(|()| 7)
            },
            |out| {
                assert_eq!(out.as_ref().ok(), Some(&7));
                Duration::from_millis(200)
            },
        )?;
        assert_eq!(out, 7);
        let took = began.elapsed();
        assert!(took < Duration::from_secs(5), "{took:?}");
        Ok(())
    }
}
