//! The kubectl plugin: on PATH as `kubectl-batchguard`, it runs as `kubectl batchguard …`.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    // kube and the Prometheus client share rustls with ring, installed process-wide.
    let _ = rustls::crypto::ring::default_provider().install_default();
    batchguard::cli::main(batchguard::cli::Cli::parse()).await
}
