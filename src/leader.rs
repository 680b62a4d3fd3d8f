//! Leader election on a Lease, so that two replicas never reconcile at once.

use std::time::Duration;

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
) -> kube_lease_manager::Result<watch::Receiver<bool>> {
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_parameters(LeaseParams::new(identity, LEASE_SECONDS, 5))
        .build()
        .await?;
    let (mut state, task) = manager.watch().await;
    // The task runs for as long as the receiver lives.
    std::mem::forget(task);
    while !*state.borrow_and_update() {
        tracing::info!(lease = name, "waiting to become the leader");
        if state.changed().await.is_err() {
            break;
        }
    }
    tracing::info!(lease = name, "leading");
    Ok(state)
}

/// Resolves when leadership is lost.
pub async fn lost(mut state: watch::Receiver<bool>) {
    loop {
        if state.changed().await.is_err() || !*state.borrow() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
