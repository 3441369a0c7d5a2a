//! The `uat` binary: parses the command line, loads the configuration and
//! hands over to the library crates. Wiring and exit codes only.

mod bench;
mod cli;
mod loadtest;

use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command, ConfigCommand};
use std::process::ExitCode;
use uat_config::{Config, Overrides};

/// mimalloc instead of glibc's malloc: on the memory benchmark's 50-client
/// phases glibc spent a fifth of the CPU in malloc/free (`malloc_consolidate`
/// alone 7%), and list and keyword throughput rose 15-35% with mimalloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(ref args) => {
            let overrides = Overrides {
                listen: args.listen.clone(),
                data_dir: args.data_dir.clone(),
                database_url: args.database_url.clone(),
            };
            runtime().and_then(|rt| rt.block_on(serve(cli.config.as_deref(), &overrides)))
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => config_check(cli.config.as_deref()),
        Command::Bench { ref which } => bench::run(which),
        Command::Loadtest(ref args) => {
            runtime().and_then(|rt| rt.block_on(loadtest::run(args, cli.config.as_deref())))
        }
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

fn config_check(path: Option<&std::path::Path>) -> anyhow::Result<()> {
    let (cfg, source) =
        Config::load(path, &Overrides::default()).context("invalid configuration")?;
    match source {
        uat_config::Source::File(p) => println!("# configuration OK: {}", p.display()),
        uat_config::Source::Defaults => {
            println!("# configuration OK: built-in defaults (no uat.toml found)")
        }
    }
    print!("{}", cfg.to_masked_toml());
    Ok(())
}

async fn serve(path: Option<&std::path::Path>, overrides: &Overrides) -> anyhow::Result<()> {
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
    // Before anything else runs: a SIGTERM from here on stops gracefully.
    let stop = shutdown_signal();
    let listener = uat_server::bind(&listen).await?;
    // The bound address: with port 0 in `listen`, the port the OS chose.
    let addr = listener
        .local_addr()
        .map_or_else(|_| listen.clone(), |a| a.to_string());
    tracing::info!(%addr, "port bound, starting the subsystems");
    let state = uat_server::build(cfg).await?;
    let app = uat_server::app(state.clone());
    tracing::info!(%addr, "uat is listening");
    uat_server::serve(listener, app, stop, opts)
        .await
        .context("server error")?;
    // Cache writes still gathered for L2/L3 go out before the process ends.
    if let Some(cache) = state.cache.tiered() {
        cache.flush(std::time::Duration::from_secs(2)).await;
    }
    tracing::info!("uat stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is
/// called, not when the future is first polled: the future runs on a task of
/// its own, and a SIGTERM that came before that task's first poll used to
/// kill the process with the default action instead of stopping it gracefully
/// (seen in CI under load, right after the first answered request).
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            let wait = |s: std::io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for {name}");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                _ = wait(int, "SIGINT") => {},
                _ = wait(term, "SIGTERM") => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}
