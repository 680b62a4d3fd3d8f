//! The kubectl plugin: on PATH as `kubectl-batchguard`, it runs as `kubectl batchguard …`.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    // kube brings rustls, as does the Prometheus client: one process-wide provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    batchguard::cli::main(batchguard::cli::Cli::parse()).await
}
