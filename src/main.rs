//! The batchguard operator: flags → telemetry → admin server + leader election + controller.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::Parser;
use kube::Client;

use batchguard::admin::{self, Health};
use batchguard::metrics::Metrics;
use batchguard::telemetry::{self, LogFormat};
use batchguard::{controller, leader};

/// Runs big data jobs as many small, memory-guarded worker Jobs.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Flags {
    /// Namespaces to watch (repeat or comma-separate); all namespaces when empty.
    #[arg(long = "namespace", env = "BATCHGUARD_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Address of the admin server (/metrics, /healthz, /readyz).
    #[arg(long, env = "BATCHGUARD_ADMIN_ADDRESS", default_value = "0.0.0.0:8080")]
    admin_address: SocketAddr,
    /// Log format.
    #[arg(long, env = "BATCHGUARD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Take a Lease before reconciling, so that several replicas are safe.
    #[arg(long, env = "BATCHGUARD_LEADER_ELECTION", default_value_t = false)]
    leader_election: bool,
    /// Namespace of the leader election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader election Lease.
    #[arg(long, env = "BATCHGUARD_LEASE_NAME", default_value = "batchguard-leader")]
    lease_name: String,
    /// Base URL of the Prometheus that scrapes worker memory (used by the memory guard).
    #[arg(long, env = "PROMETHEUS_URL")]
    prometheus_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    telemetry::init(flags.log_format);
    // Both kube and the Prometheus client bring rustls; one process-wide provider avoids a
    // run-time panic when the first TLS connection picks between them.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    tokio::spawn(admin::serve(flags.admin_address, metrics.clone(), health.clone()));

    let leadership = if flags.leader_election {
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("batchguard-{}", std::process::id()));
        Some(leader::acquire(client.clone(), &flags.lease_namespace, &flags.lease_name, identity).await?)
    } else {
        None
    };

    let ready = Arc::new(AtomicBool::new(false));
    let namespaces: Vec<Option<String>> = if flags.namespaces.is_empty() {
        vec![None]
    } else {
        flags.namespaces.iter().cloned().map(Some).collect()
    };
    let controllers = futures::future::join_all(
        namespaces.into_iter().map(|ns| controller::run(client.clone(), ns, metrics.clone(), ready.clone())),
    );
    let readiness = {
        let health = health.clone();
        let ready = ready.clone();
        async move {
            while !ready.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            health.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    };
    tokio::spawn(readiness);
    match leadership {
        Some(state) => tokio::select! {
            _ = controllers => {}
            _ = leader::lost(state) => {
                tracing::error!("lost the leader lease; exiting so that another replica takes over");
                std::process::exit(1);
            }
        },
        None => {
            controllers.await;
        }
    }
    tracing::info!("shut down");
    Ok(())
}
