//! The batchguard operator: flags → telemetry → admin server + leader election + controller.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::Parser;
use kube::Client;

use batchguard::admin::{self, Health};
use batchguard::guard::prometheus::{Prometheus, PrometheusFlags};
use batchguard::guard::promql::{DEFAULT_MAX_SAMPLE_AGE, MemoryMetric, parse_age};
use batchguard::metrics::Metrics;
use batchguard::telemetry::{self, LogFormat};
use batchguard::{controller, leader};

/// Runs big data jobs as many small, memory-guarded worker Jobs.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Flags {
    /// Namespaces to watch (repeat or comma-separate); all namespaces when empty.
    #[arg(
        long = "namespace",
        env = "BATCHGUARD_NAMESPACES",
        value_delimiter = ','
    )]
    namespaces: Vec<String>,
    /// Address of the admin server (/metrics, /healthz, /readyz).
    #[arg(long, env = "BATCHGUARD_ADMIN_ADDRESS", default_value = "0.0.0.0:8080")]
    admin_address: SocketAddr,
    /// Log format.
    #[arg(
        long,
        env = "BATCHGUARD_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Take a Lease before reconciling, so that several replicas are safe.
    #[arg(long, env = "BATCHGUARD_LEADER_ELECTION", default_value_t = false)]
    leader_election: bool,
    /// Namespace of the leader election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "BATCHGUARD_LEASE_NAME",
        default_value = "batchguard-leader"
    )]
    lease_name: String,
    #[command(flatten)]
    prometheus: PrometheusFlags,
    /// How often the memory guard reads worker memory.
    #[arg(long, env = "BATCHGUARD_POLL_INTERVAL_SECONDS", default_value_t = 5)]
    poll_interval_seconds: u64,
    /// How old a memory sample may be and still count (seconds, or a duration like 90s or 2m).
    /// It follows the scrape interval of the job that scrapes cAdvisor, not the poll interval:
    /// keep it above that interval plus cAdvisor's housekeeping (10-15 s). The default suits
    /// 15 s, 30 s and 60 s scrapes; a worker running longer than this without a fresh sample
    /// makes the guard blind for its run.
    #[arg(
        long,
        env = "BATCHGUARD_MEMORY_MAX_SAMPLE_AGE",
        default_value = DEFAULT_MAX_SAMPLE_AGE,
        value_parser = parse_age
    )]
    memory_max_sample_age: std::time::Duration,
    /// Which memory series the guard reads.
    #[arg(
        long,
        env = "BATCHGUARD_MEMORY_METRIC",
        value_enum,
        default_value = "working-set"
    )]
    memory_metric: MemoryMetric,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    telemetry::init(flags.log_format);
    // kube and the Prometheus client share rustls with ring alone (Cargo.toml); reqwest is
    // built without a provider of its own and uses this process-wide one.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    tokio::spawn(admin::serve(
        flags.admin_address,
        metrics.clone(),
        health.clone(),
    ));

    let leadership = if flags.leader_election {
        let identity = std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("batchguard-{}", std::process::id()));
        Some(
            leader::acquire(
                client.clone(),
                &flags.lease_namespace,
                &flags.lease_name,
                identity,
            )
            .await?,
        )
    } else {
        None
    };

    let ready = Arc::new(AtomicBool::new(false));
    let namespaces: Vec<Option<String>> = if flags.namespaces.is_empty() {
        vec![None]
    } else {
        flags.namespaces.iter().cloned().map(Some).collect()
    };
    let guard = |flags: &Flags| -> anyhow::Result<Option<controller::GuardSettings>> {
        let Some(url) = &flags.prometheus.prometheus_url else {
            tracing::warn!("no --prometheus-url: the memory guard is off");
            return Ok(None);
        };
        Ok(Some(controller::GuardSettings {
            prometheus: Prometheus::new(url, &flags.prometheus)?,
            metric: flags.memory_metric,
            interval: std::time::Duration::from_secs(flags.poll_interval_seconds.max(1)),
            max_sample_age: flags.memory_max_sample_age,
        }))
    };
    let mut controllers = Vec::new();
    for ns in namespaces {
        controllers.push(controller::run(
            client.clone(),
            ns,
            metrics.clone(),
            ready.clone(),
            guard(&flags)?,
        ));
    }
    let controllers = futures::future::join_all(controllers);
    let readiness = {
        let health = health.clone();
        let ready = ready.clone();
        async move {
            while !ready.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            health
                .ready
                .store(true, std::sync::atomic::Ordering::Relaxed);
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
