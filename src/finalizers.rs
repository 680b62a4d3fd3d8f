//! Releasing batchguard's finalizers when no operator will: `batchguard release-finalizers`,
//! which the chart runs as a post-delete hook of `helm uninstall`, and the integration tests'
//! teardown. Without it, runs keep `batchguard.dev/cleanup` and worker pods keep
//! `batchguard.dev/result` once the operator is gone, and deleting them, or their namespace,
//! never finishes.
//!
//! Releasing a run's finalizer lets its deletion skip the operator's cleanup: its Jobs still
//! go, by owner reference. Releasing a pod's finalizer lets it vanish before its result is in
//! the run's status; a reinstalled operator reads the results of the pods still there, and
//! runs again the batches whose pods are gone.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::api::BatchRun;
use crate::api::labels::{
    CLEANUP_FINALIZER, RESULT_FINALIZER, finalizer_removal, managed_selector,
};

/// Passes at most: a pass that releases nothing ends it sooner.
const MAX_PASSES: usize = 10;

/// What one pass, or all of them, released.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    pub runs: usize,
    pub pods: usize,
}

impl Released {
    fn nothing(&self) -> bool {
        self.runs == 0 && self.pods == 0
    }
}

impl std::ops::AddAssign for Released {
    fn add_assign(&mut self, other: Self) {
        self.runs += other.runs;
        self.pods += other.pods;
    }
}

/// Releases both finalizers in `namespaces` (all namespaces when empty), pass after pass until
/// one finds nothing left, `pause` apart: objects created while a pass runs (a Job's pod, a
/// stopping operator's last write) are caught by the next one.
pub async fn release_all(
    client: &Client,
    namespaces: &[String],
    pause: Duration,
) -> Result<Released, kube::Error> {
    let scopes: Vec<Option<&str>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(|ns| Some(ns.as_str())).collect()
    };
    let mut total = Released::default();
    for pass in 1..=MAX_PASSES {
        let mut released = Released::default();
        for scope in &scopes {
            released += release_once(client, *scope).await?;
        }
        tracing::info!(
            pass,
            runs = released.runs,
            pods = released.pods,
            "released finalizers"
        );
        total += released;
        if released.nothing() {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    Ok(total)
}

/// One pass over one namespace (`None`: all of them): runs first, then worker pods.
pub async fn release_once(
    client: &Client,
    namespace: Option<&str>,
) -> Result<Released, kube::Error> {
    let runs: Api<BatchRun> = scoped(client, namespace);
    let pods: Api<Pod> = scoped(client, namespace);
    let runs = match runs.list(&ListParams::default()).await {
        Ok(list) => list.items,
        // No BatchRun CRD: no run can hold a finalizer.
        Err(kube::Error::Api(e)) if e.code == 404 => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut released = Released::default();
    for run in &runs {
        if release(client, run, CLEANUP_FINALIZER).await? {
            released.runs += 1;
        }
    }
    let workers = pods
        .list(&ListParams::default().labels(&managed_selector()))
        .await?;
    for pod in &workers {
        if release(client, pod, RESULT_FINALIZER).await? {
            released.pods += 1;
        }
    }
    Ok(released)
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Removes `finalizer` from `object`; `false` when there was nothing to remove, or the object
/// went or changed meanwhile (the next pass sees it as it is now).
async fn release<K>(client: &Client, object: &K, finalizer: &str) -> Result<bool, kube::Error>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let Some(patch) = finalizer_removal(object.finalizers(), finalizer) else {
        return Ok(false);
    };
    let api: Api<K> = Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
    match api
        .patch(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => {
            tracing::debug!(
                namespace = object.namespace().unwrap_or_default(),
                name = %object.name_any(),
                finalizer,
                "finalizer released"
            );
            Ok(true)
        }
        Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409 | 422) => Ok(false),
        Err(e) => Err(e),
    }
}
