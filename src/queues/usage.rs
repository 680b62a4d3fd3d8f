//! What a queue's workers hold, read from live Jobs and pods (pure). Recomputed on every
//! admission, so an operator restart or a new leader sees exactly what the cluster holds.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::api::kube_facts::{finished_condition, job_pod_spec, pod_ended, pod_memory_bytes};
use crate::api::labels::{JOB_NAME, RUN_UID};
use crate::plan::Holding;

/// A pod holds memory until all its containers have ended, terminating or not.
fn holds_memory(pod: &Pod) -> bool {
    !pod_ended(pod)
}

/// A Job that still wants a worker: not finished and not being deleted.
fn job_alive(job: &Job) -> bool {
    finished_condition(job).is_none() && job.metadata.deletion_timestamp.is_none()
}
/// The workers of one queue (the caller passes its Jobs and pods): one holding per batch Job
/// whose pod runs or is about to, and one per orphaned pod still running. Also returns the
/// names of the Jobs seen, so that expectations of Jobs created earlier can be retired.
pub fn queue_holdings<'a>(
    jobs: impl IntoIterator<Item = &'a Job>,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> (Vec<Holding>, BTreeSet<String>) {
    let mut pods_of: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    let mut orphans = vec![];
    for pod in pods {
        match pod.labels().get(JOB_NAME) {
            Some(job) => pods_of.entry(job.clone()).or_default().push(pod),
            None => orphans.push(pod),
        }
    }
    let run_of =
        |labels: &BTreeMap<String, String>| labels.get(RUN_UID).cloned().unwrap_or_default();
    let mut holdings = vec![];
    let mut seen = BTreeSet::new();
    for job in jobs {
        let name = job.name_any();
        let pods = pods_of.remove(&name).unwrap_or_default();
        seen.insert(name);
        let held: u64 = pods
            .iter()
            .filter(|p| holds_memory(p))
            .filter_map(|p| p.spec.as_ref())
            .map(pod_memory_bytes)
            .sum();
        let holding = pods.iter().any(|p| holds_memory(p));
        let bytes = if holding {
            Some(held)
        } else if job_alive(job) && !pods.iter().any(|p| pod_ended(p)) {
            // Its pod is not created (or not seen) yet: it will hold the template's memory.
            job_pod_spec(job).map(pod_memory_bytes)
        } else {
            None
        };
        if let Some(bytes) = bytes {
            holdings.push(Holding {
                run: run_of(job.labels()),
                bytes,
            });
        }
    }
    // Pods whose Job is gone (deleted in the background) still hold memory until they end.
    for pod in pods_of.into_values().flatten().chain(orphans) {
        if holds_memory(pod) {
            holdings.push(Holding {
                run: run_of(pod.labels()),
                bytes: pod.spec.as_ref().map(pod_memory_bytes).unwrap_or(0),
            });
        }
    }
    (holdings, seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MI: u64 = 1 << 20;

    fn job(name: &str, conditions: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {RUN_UID: "uid-a"}},
            "spec": {"template": {"spec": {"containers": [
                {"name": "worker", "image": "w", "resources": {"limits": {"memory": "512Mi"}}}
            ]}}},
            "status": {"conditions": conditions}
        }))
        .unwrap()
    }

    fn pod(job: &str, phase: &str, deleting: bool) -> Pod {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("{job}-pod"), "labels": {RUN_UID: "uid-a", JOB_NAME: job}},
            "spec": {"containers": [
                {"name": "worker", "image": "w", "resources": {"limits": {"memory": "512Mi"}}},
                {"name": "sidecar", "image": "s", "resources": {"requests": {"memory": "64Mi"}}}
            ]},
            "status": {"phase": phase}
        }))
        .unwrap();
        if deleting {
            pod.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::from_second(1).unwrap(),
                ));
        }
        pod
    }

    #[test]
    fn a_running_pod_holds_all_its_containers_memory() {
        let j = job("j1", json!([]));
        let p = pod("j1", "Running", false);
        let (holdings, seen) = queue_holdings([&j], [&p]);
        assert_eq!(holdings.len(), 1);
        assert_eq!(holdings[0].bytes, 576 * MI);
        assert_eq!(holdings[0].run, "uid-a");
        assert!(seen.contains("j1"));
    }

    #[test]
    fn a_job_without_its_pod_yet_holds_its_template() {
        let j = job("j1", json!([]));
        let (holdings, _) = queue_holdings([&j], []);
        assert_eq!(holdings[0].bytes, 512 * MI);
    }

    #[test]
    fn a_terminating_pod_holds_memory_until_it_ends() {
        // A drained worker: its pod is being deleted, its Job already gave up.
        let j = job("j1", json!([{"type": "Failed", "status": "True"}]));
        let running = pod("j1", "Running", true);
        assert_eq!(queue_holdings([&j], [&running]).0.len(), 1);
        let ended = pod("j1", "Failed", true);
        assert!(queue_holdings([&j], [&ended]).0.is_empty());
        // And without its Job, deleted in the background.
        assert_eq!(queue_holdings([], [&running]).0.len(), 1);
    }

    #[test]
    fn finished_jobs_and_ended_pods_hold_nothing() {
        let done = job("j1", json!([{"type": "Complete", "status": "True"}]));
        let ended = pod("j2", "Succeeded", false);
        // A Job whose worker ended but that is not marked finished yet holds nothing either.
        let racing = job("j2", json!([]));
        assert!(queue_holdings([&done, &racing], [&ended]).0.is_empty());
    }
}
