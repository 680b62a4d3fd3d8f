//! Leader election on a Lease, so that two replicas never reconcile at once.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use tokio::sync::watch;

/// Lease holding time; a new leader takes over at most this long after a crash.
const LEASE_SECONDS: u64 = 15;

/// Blocks until this replica holds the lease; the returned receiver turns `false` when the
/// lease is lost, and the caller must then stop reconciling.
pub async fn acquire(
    client: Client,
    namespace: &str,
    name: &str,
    identity: String,
) -> anyhow::Result<watch::Receiver<bool>> {
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_parameters(LeaseParams::new(identity, LEASE_SECONDS, 5))
        .build()
        .await?;
    // The lease task renews the lease for as long as the receiver lives; dropping its handle
    // detaches it without stopping it.
    let (mut state, _renewing) = manager.watch().await;
    while !*state.borrow_and_update() {
        tracing::info!(lease = name, "waiting to become the leader");
        if state.changed().await.is_err() {
            anyhow::bail!(
                "the lease manager of {name} stopped before this replica became the leader"
            );
        }
    }
    tracing::info!(lease = name, "leading");
    Ok(state)
}

/// Resolves when leadership is lost (or the lease manager stops).
pub async fn lost(mut state: watch::Receiver<bool>) {
    while state.changed().await.is_ok() {
        if !*state.borrow() {
            return;
        }
    }
}
