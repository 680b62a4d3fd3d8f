//! `kubectl batchguard`: the day-two view of BatchRuns for people (status, live progress,
//! results, logs of failed batches, retries). The operator does the work; this only reads
//! runs and asks for retries.
//!
//! Exit codes: 0 done (and, for `watch`, the run succeeded), 1 the watched run failed,
//! 2 a usage or API error (unknown run, no CRD, no access).

mod client;
mod format;
mod logs;
mod results;
mod retry;
mod status;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use client::CliError;
use client::Target;

/// batchguard runs: status, live progress, results, failed batches and retries.
#[derive(Parser, Debug)]
#[command(name = "kubectl batchguard", version)]
pub struct Cli {
    /// Path to the kubeconfig file (default: KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace of the runs (default: the context's namespace).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// A table of runs, or one run in detail.
    Status { run: Option<String> },
    /// Follows a run to its end: progress, workers, events; exits 0 on success, 1 on failure.
    Watch {
        run: String,
        /// Seconds between looks.
        #[arg(long, default_value_t = 1)]
        interval: u64,
        #[command(flatten)]
        prometheus: crate::prometheus::PrometheusFlags,
    },
    /// The aggregate, the outputs and the failures of a run.
    Results {
        run: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: format::Output,
    },
    /// Logs of the pods of failed batches, while they are retained.
    Logs {
        run: String,
        /// Only failed batches (the only selection there is, and required to say so).
        #[arg(long, required = true)]
        failed: bool,
    },
    /// Runs the failed ranges of a run again.
    Retry {
        run: String,
        /// Retry the failed ranges (required: the only kind of retry there is).
        #[arg(long, required = true)]
        failed: bool,
    },
}

/// Runs the command line; prints errors and maps them to exit codes.
pub async fn main(cli: Cli) -> ExitCode {
    match dispatch(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode, CliError> {
    let target = Target::connect(
        cli.kubeconfig.as_deref(),
        cli.context.as_deref(),
        cli.namespace.as_deref(),
    )
    .await?;
    match cli.command {
        Command::Status { run } => status::run(&target, run.as_deref()).await,
        Command::Watch {
            run,
            interval,
            prometheus,
        } => watch::run(&target, &run, interval, &prometheus).await,
        Command::Results { run, output } => results::run(&target, &run, output).await,
        Command::Logs { run, .. } => logs::run(&target, &run).await,
        Command::Retry { run, .. } => retry::run(&target, &run).await,
    }
}
