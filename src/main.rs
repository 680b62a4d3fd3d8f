//! The batchguard operator: flags → telemetry → admin server + leader election + controller;
//! and `batchguard release-finalizers`, which frees runs and pods once the operator is gone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use kube::Client;
use kube::client::ClientBuilder;

use batchguard::admin::{self, Health};
use batchguard::metrics::Metrics;
use batchguard::prometheus::promql::{DEFAULT_MAX_SAMPLE_AGE, MemoryMetric, parse_age};
use batchguard::prometheus::{Prometheus, PrometheusFlags};
use batchguard::telemetry::{self, LogFormat};
use batchguard::{controller, finalizers, leader};

/// Runs big data jobs as many small, memory-guarded worker Jobs.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Flags {
    #[command(subcommand)]
    command: Option<Command>,
    /// Namespaces to watch (repeat or comma-separate); all namespaces when empty.
    #[arg(
        long = "namespace",
        env = "BATCHGUARD_NAMESPACES",
        value_delimiter = ',',
        global = true
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
        default_value = "text",
        global = true
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

#[derive(Subcommand, Debug)]
enum Command {
    /// Remove batchguard's finalizers (`batchguard.dev/cleanup` on BatchRuns,
    /// `batchguard.dev/result` on worker pods) in the --namespace list (all namespaces when
    /// empty), so that deleting runs, pods or namespaces finishes without the operator. Run
    /// it once the operator is stopped: the chart's uninstall hook does.
    ReleaseFinalizers,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    telemetry::init(flags.log_format);
    // kube and the Prometheus client share rustls with ring alone (Cargo.toml); reqwest is
    // built without a provider of its own and uses this process-wide one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Every request the client sends is counted on its way out, by one layer.
    let metrics = Arc::new(Metrics::default());
    let client = ClientBuilder::try_from(kube::Config::infer().await?)?
        .with_layer(&metrics.api.layer())
        .build();
    match flags.command {
        Some(Command::ReleaseFinalizers) => {
            let released = finalizers::release_all(
                &client,
                &flags.namespaces,
                std::time::Duration::from_secs(2),
            )
            .await?;
            tracing::info!(
                runs = released.runs,
                pods = released.pods,
                "batchguard's finalizers are released"
            );
            Ok(())
        }
        None => operate(client, flags, metrics).await,
    }
}

async fn operate(client: Client, flags: Flags, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let health = Arc::new(Health::default());
    tokio::spawn(admin::serve(
        flags.admin_address,
        metrics.clone(),
        health.clone(),
    ));

    // A standby is Ready as soon as it takes part in the election: a rolling update then
    // finishes while the old replica still leads, and the Lease keeps the two apart.
    let election = if flags.leader_election {
        let identity = std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("batchguard-{}", std::process::id()));
        let mut election = leader::join(
            client.clone(),
            &flags.lease_namespace,
            &flags.lease_name,
            identity,
        )
        .await?;
        health.ready.store(true, Ordering::Relaxed);
        election.lead().await?;
        Some(election)
    } else {
        None
    };
    metrics.leading.set(1);

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
    // Without leader election, Ready waits for the caches.
    let readiness = {
        let health = health.clone();
        let ready = ready.clone();
        async move {
            while !ready.load(Ordering::Relaxed) {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            health.ready.store(true, Ordering::Relaxed);
        }
    };
    tokio::spawn(readiness);
    match election {
        Some(mut election) => {
            let lost = tokio::select! {
                _ = controllers => false,
                _ = election.lost() => true,
            };
            if lost {
                tracing::error!(
                    "lost the leader lease; exiting so that another replica takes over"
                );
                std::process::exit(1);
            }
            // The controllers have stopped: the successor may take over now.
            metrics.leading.set(0);
            election.release().await;
        }
        None => {
            controllers.await;
        }
    }
    tracing::info!("shut down");
    Ok(())
}
