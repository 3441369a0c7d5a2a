//! `uat loadtest`: placeholder until the load-test work lands.

use clap::Args;
use std::path::Path;

/// `uat loadtest` options.
#[derive(Debug, Args)]
pub struct LoadtestArgs {
    /// Target base URL, e.g. http://127.0.0.1:3033.
    #[arg(long)]
    pub url: Option<String>,
}

/// Runs the load test.
pub async fn run(_args: &LoadtestArgs, _config: Option<&Path>) -> anyhow::Result<()> {
    anyhow::bail!("uat loadtest is not implemented yet")
}
