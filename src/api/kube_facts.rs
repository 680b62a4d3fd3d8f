//! Small facts about Kubernetes objects, stated once for the controller, the queue, the guard
//! and the CLI (pure): a Job has finished, a pod has ended, how a container stands, and the
//! memory a pod or a Job's pod holds.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::{
    Container, ContainerStateTerminated, ContainerStatus, Pod, PodSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::memory_bytes;

/// The condition that says a Job finished (`Complete` or `Failed`, status True), if it did.
pub fn finished_condition(job: &Job) -> Option<&JobCondition> {
    job.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .find(|c| c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed"))
}

/// The pod's phase, `Pending` until the kubelet reports one.
pub fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// All the pod's containers have stopped for good (phase Succeeded or Failed).
pub fn pod_ended(pod: &Pod) -> bool {
    matches!(pod_phase(pod), "Succeeded" | "Failed")
}

/// What the kubelet reports of container `name`.
pub fn container_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == name)
}

/// How container `name` ended, once it has.
pub fn terminated<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStateTerminated> {
    container_status(pod, name)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
}

/// Container `name` is running (neither waiting nor terminated).
pub fn running(pod: &Pod, name: &str) -> bool {
    container_status(pod, name)
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

/// The `memory` entry of a resources map (`limits` or `requests`).
pub fn memory_quantity(map: Option<&BTreeMap<String, Quantity>>) -> Option<&Quantity> {
    map?.get("memory")
}

/// The `memory` entry of a resources map, as written and in bytes; `None` when unreadable.
pub fn memory_of(map: Option<&BTreeMap<String, Quantity>>) -> Option<(&str, u64)> {
    let quantity = memory_quantity(map)?;
    Some((&quantity.0, memory_bytes(&quantity.0).ok()?))
}

/// Memory a pod may hold, as the scheduler reckons it, with each container's limit (or its
/// request, where no limit is set): its containers together with its native sidecars (init
/// containers with `restartPolicy: Always`, which run beside them), or an ordinary init
/// container with the sidecars started before it, if that is more.
pub fn pod_memory_bytes(spec: &PodSpec) -> u64 {
    let of = |c: &Container| {
        let resources = c.resources.as_ref();
        memory_quantity(resources.and_then(|r| r.limits.as_ref()))
            .or_else(|| memory_quantity(resources.and_then(|r| r.requests.as_ref())))
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

/// The spec of the pod a Job creates.
pub fn job_pod_spec(job: &Job) -> Option<&PodSpec> {
    job.spec.as_ref()?.template.spec.as_ref()
}

/// Memory the pod of a Job will hold (0 for a Job without a pod template spec).
pub fn job_memory_bytes(job: &Job) -> u64 {
    job_pod_spec(job).map(pod_memory_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MI: u64 = 1 << 20;

    #[test]
    fn native_sidecars_count_beside_the_worker() {
        let spec: PodSpec = serde_json::from_value(json!({
            "initContainers": [
                {"name": "setup", "image": "i", "resources": {"limits": {"memory": "300Mi"}}},
                {"name": "proxy", "image": "i", "restartPolicy": "Always", "resources": {"limits": {"memory": "64Mi"}}},
                {"name": "migrate", "image": "i", "resources": {"limits": {"memory": "200Mi"}}}
            ],
            "containers": [{"name": "worker", "image": "w", "resources": {"limits": {"memory": "128Mi"}}}]
        }))
        .unwrap();
        // Running: worker 128 + proxy 64 = 192; init: setup 300 alone, migrate 200 + proxy 64.
        assert_eq!(pod_memory_bytes(&spec), 300 * MI);
        let mut lean = spec.clone();
        lean.init_containers.as_mut().unwrap().remove(0);
        assert_eq!(
            pod_memory_bytes(&lean),
            264 * MI,
            "migrate with the proxy beside it"
        );
        lean.init_containers.as_mut().unwrap().pop();
        assert_eq!(
            pod_memory_bytes(&lean),
            192 * MI,
            "the proxy runs beside the worker"
        );
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

    #[test]
    fn a_container_without_a_limit_counts_its_request() {
        let spec: PodSpec = serde_json::from_value(json!({"containers": [
            {"name": "worker", "image": "w", "resources": {"limits": {"memory": "512Mi"}}},
            {"name": "sidecar", "image": "s", "resources": {"requests": {"memory": "64Mi"}}}
        ]}))
        .unwrap();
        assert_eq!(pod_memory_bytes(&spec), 576 * MI);
    }

    #[test]
    fn a_job_is_finished_only_by_a_true_complete_or_failed_condition() {
        let job = |conditions: serde_json::Value| -> Job {
            serde_json::from_value(json!({"status": {"conditions": conditions}})).unwrap()
        };
        assert!(
            finished_condition(&job(json!([{"type": "Complete", "status": "True"}]))).is_some()
        );
        assert!(finished_condition(&job(json!([{"type": "Failed", "status": "True"}]))).is_some());
        assert!(finished_condition(&job(json!([{"type": "Failed", "status": "False"}]))).is_none());
        assert!(
            finished_condition(&job(json!([{"type": "Suspended", "status": "True"}]))).is_none()
        );
    }

    #[test]
    fn a_pod_without_a_phase_is_pending_and_not_ended() {
        let pod = |phase: Option<&str>| -> Pod {
            serde_json::from_value(json!({"status": {"phase": phase}})).unwrap()
        };
        assert_eq!(pod_phase(&pod(None)), "Pending");
        assert!(!pod_ended(&pod(Some("Running"))));
        assert!(pod_ended(&pod(Some("Succeeded"))));
        assert!(pod_ended(&pod(Some("Failed"))));
    }

    #[test]
    fn container_states_are_read_by_name() {
        let pod: Pod = serde_json::from_value(json!({"status": {"containerStatuses": [
            {"name": "proxy", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
             "state": {"running": {}}},
            {"name": "worker", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}
        ]}}))
        .unwrap();
        assert!(running(&pod, "proxy"));
        assert!(!running(&pod, "worker"));
        assert_eq!(terminated(&pod, "worker").map(|t| t.exit_code), Some(137));
        assert!(terminated(&pod, "absent").is_none());
    }
}
