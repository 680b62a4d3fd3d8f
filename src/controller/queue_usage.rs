//! What a queue's workers hold, read from live Jobs and pods (pure). Recomputed on every
//! admission, so an operator restart or a new leader sees exactly what the cluster holds.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::ResourceExt;

use crate::api::labels::{JOB_NAME, RUN_UID};
use crate::api::memory_bytes;
use crate::plan::Holding;

/// Memory a pod may hold, as the scheduler reckons it, with each container's limit (or its
/// request, where no limit is set): its containers together with its native sidecars (init
/// containers with `restartPolicy: Always`, which run beside them), or an ordinary init
/// container with the sidecars started before it, if that is more.
pub fn pod_memory_bytes(spec: &PodSpec) -> u64 {
    let of = |c: &Container| {
        let resources = c.resources.as_ref();
        resources
            .and_then(|r| r.limits.as_ref()?.get("memory"))
            .or_else(|| resources.and_then(|r| r.requests.as_ref()?.get("memory")))
            .and_then(|q| memory_bytes(&q.0).ok())
            .unwrap_or(0)
    };
    let mut sidecars = 0u64;
    let mut init_peak = 0u64;
    for init in spec.init_containers.iter().flatten() {
        if init.restart_policy.as_deref() == Some("Always") {
            sidecars += of(init);
            init_peak = init_peak.max(sidecars);
        } else {
            init_peak = init_peak.max(sidecars + of(init));
        }
    }
    let running: u64 = spec.containers.iter().map(of).sum::<u64>() + sidecars;
    running.max(init_peak)
}

/// Memory the pod of a Job will hold (0 for a Job without a pod template spec).
pub fn job_memory_bytes(job: &Job) -> u64 {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(pod_memory_bytes)
        .unwrap_or(0)
}

/// A pod holds memory until all its containers have ended, terminating or not.
fn holds_memory(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
}

fn terminal(pod: &Pod) -> bool {
    !holds_memory(pod)
}

/// A Job that still wants a worker: not finished and not being deleted.
fn job_alive(job: &Job) -> bool {
    let finished = job
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed"));
    !finished && job.metadata.deletion_timestamp.is_none()
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
        } else if job_alive(job) && !pods.iter().any(|p| terminal(p)) {
            // Its pod is not created (or not seen) yet: it will hold the template's memory.
            job.spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .map(pod_memory_bytes)
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
    #[test]
    fn native_sidecars_count_beside_the_worker() {
        let spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(serde_json::json!({
            "initContainers": [
                {"name": "setup", "image": "i", "resources": {"limits": {"memory": "300Mi"}}},
                {"name": "proxy", "image": "i", "restartPolicy": "Always", "resources": {"limits": {"memory": "64Mi"}}},
                {"name": "migrate", "image": "i", "resources": {"limits": {"memory": "200Mi"}}}
            ],
            "containers": [{"name": "worker", "image": "w", "resources": {"limits": {"memory": "128Mi"}}}]
        }))
        .unwrap();
        // Running: worker 128 + proxy 64 = 192; init: setup 300 alone, migrate 200 + proxy 64.
        assert_eq!(super::pod_memory_bytes(&spec), 300 << 20);
        let mut lean = spec.clone();
        lean.init_containers.as_mut().unwrap().remove(0);
        assert_eq!(
            super::pod_memory_bytes(&lean),
            264 << 20,
            "migrate with the proxy beside it"
        );
        lean.init_containers.as_mut().unwrap().pop();
        assert_eq!(
            super::pod_memory_bytes(&lean),
            192 << 20,
            "the proxy runs beside the worker"
        );
    }

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

    #[test]
    fn init_containers_count_when_larger() {
        let spec: PodSpec = serde_json::from_value(json!({
            "initContainers": [{"name": "fetch", "image": "f", "resources": {"limits": {"memory": "1Gi"}}}],
            "containers": [{"name": "worker", "image": "w", "resources": {"limits": {"memory": "512Mi"}}}]
        }))
        .unwrap();
        assert_eq!(pod_memory_bytes(&spec), 1024 * MI);
    }
}
