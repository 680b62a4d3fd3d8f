//! Leader election on a Lease, so that two replicas never reconcile at once.
//!
//! A replica first joins the election (the lease manager runs and the Lease is readable): from
//! then on it is a healthy standby, and Ready, so that a rolling update can finish while the
//! old leader still holds the Lease. It reconciles only once it leads, and releases the Lease
//! when it stops. (A standby of kube-lease-manager looks again only when the lease it saw
//! would have expired, so a handover still takes up to the lease time.)

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Lease holding time; a new leader takes over at most this long after a crash.
const LEASE_SECONDS: u64 = 15;
/// How long a stopping leader waits for its Lease to be released.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why this replica cannot take part in the election.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not join the leader election on Lease {lease}: {source}")]
    Join {
        lease: String,
        source: kube_lease_manager::LeaseManagerError,
    },
    #[error("the lease manager of {lease} stopped before this replica became the leader")]
    Stopped { lease: String },
}

/// This replica's place in the election.
pub struct Election {
    state: watch::Receiver<bool>,
    /// The lease task: it renews the Lease while `state` lives and releases it once dropped.
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
    lease: String,
}

/// Joins the election: returns once the lease manager runs, leading or not.
pub async fn join(
    client: Client,
    namespace: &str,
    name: &str,
    identity: String,
) -> Result<Election, Error> {
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_parameters(LeaseParams::new(identity, LEASE_SECONDS, 5))
        .build()
        .await
        .map_err(|source| Error::Join {
            lease: name.to_string(),
            source,
        })?;
    let (state, task) = manager.watch().await;
    Ok(Election {
        state,
        task,
        lease: name.to_string(),
    })
}

impl Election {
    /// Blocks until this replica holds the lease.
    pub async fn lead(&mut self) -> Result<(), Error> {
        while !*self.state.borrow_and_update() {
            tracing::info!(lease = %self.lease, "standing by: waiting to become the leader");
            if self.state.changed().await.is_err() {
                return Err(Error::Stopped {
                    lease: self.lease.clone(),
                });
            }
        }
        tracing::info!(lease = %self.lease, "leading");
        Ok(())
    }

    /// Resolves when leadership is lost (or the lease manager stops).
    pub async fn lost(&mut self) {
        while self.state.changed().await.is_ok() {
            if !*self.state.borrow() {
                return;
            }
        }
    }

    /// Gives the Lease up, for a successor to take it now; call it only once this replica
    /// has stopped reconciling.
    pub async fn release(self) {
        let Election { state, task, lease } = self;
        drop(state);
        match tokio::time::timeout(RELEASE_TIMEOUT, task).await {
            Ok(Ok(Ok(_))) => tracing::info!(lease = %lease, "released the lease"),
            Ok(Ok(Err(error))) => {
                tracing::warn!(lease = %lease, %error, "the lease was not released: it expires instead")
            }
            Ok(Err(error)) => {
                tracing::warn!(lease = %lease, %error, "the lease task failed: the lease expires instead")
            }
            Err(_) => {
                tracing::warn!(lease = %lease, "releasing the lease timed out: it expires instead")
            }
        }
    }
}
