//! Command-line interface.

use clap::{Args, CommandFactory as _, Parser, Subcommand};
use std::path::PathBuf;

/// Universal AI Tools: an OpenAI-compatible AI gateway, response cache, local
/// embeddings, vector database and memory service in one binary.
#[derive(Debug, Parser)]
#[command(name = "uat", version, about)]
pub struct Cli {
    /// Configuration file (TOML) of `serve` and `config check` (`loadtest` and
    /// `bench` take none and refuse it). Default: ./uat.toml when present,
    /// else built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Configuration tools.
    Config {
        /// What to do with the configuration.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Load-test a running gateway (or the built-in mock upstream directly vs. through uat).
    Loadtest(crate::loadtest::LoadtestArgs),
    /// Probe a running server's `/health` (or `--url`): exit 0 when it answers 2xx, 1
    /// otherwise (the container image's HEALTHCHECK).
    Health(HealthArgs),
    /// Benchmarks of the engines, each with its baseline measured in the same run.
    Bench {
        /// Which engine.
        #[command(subcommand)]
        which: crate::bench::BenchCommand,
    },
}

/// `uat health` flags.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// URL to probe. Default: `/health` on the configured `server.listen` port
    /// of this host (`http://127.0.0.1:3033/health` with the defaults).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Probe `/ready` instead of `/health` (every critical subsystem up).
    #[arg(long, conflicts_with = "url")]
    pub ready: bool,
    /// How long to wait for the answer.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = uat_config::duration::parse)]
    pub timeout: std::time::Duration,
}

/// `uat serve` flags; they override the file and the environment.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (overrides server.listen).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Data directory (overrides storage.data_dir).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL (overrides storage.database_url).
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
}

/// `uat config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective result with secrets masked.
    Check,
}

/// `--config` is global so that it may come before or after the subcommand,
/// which also lets it through to the commands that read no configuration:
/// refused there, with the exit code and format of a parse error, so a
/// `uat loadtest --compare --config prod.toml` does not look as if it
/// configured the gateway.
pub fn check_unused_config(cli: &Cli) -> Result<(), clap::Error> {
    if cli.config.is_none() {
        return Ok(());
    }
    let why = match cli.command {
        Command::Serve(_) | Command::Config { .. } | Command::Health(_) => return Ok(()),
        Command::Loadtest(_) => {
            "`uat loadtest` reads no configuration file (a `--compare` gateway is configured \
             by a file of its own; the load is set by the loadtest flags)"
        }
        Command::Bench { .. } => {
            "`uat bench` reads no configuration file (the benchmarks are set by their flags)"
        }
    };
    Err(Cli::command().error(
        clap::error::ErrorKind::ArgumentConflict,
        format!("the argument '--config <FILE>' cannot be used here: {why}"),
    ))
}
