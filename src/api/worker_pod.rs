//! Which container is the worker, and a worker pod's own settings, read back from the pod (or
//! its Job's template) rather than from the run's current spec: the template and the resources
//! may change while a run is in flight, and a pod keeps what its Job was built with. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;

use super::kube_facts::{container_status, memory_of};
use super::labels::WORKER_CONTAINER;
use super::{BatchRun, BatchRunSpec};

/// The worker container: the one named `worker`, or else the first.
pub fn worker_index(spec: &PodSpec) -> Option<usize> {
    spec.containers
        .iter()
        .position(|c| c.name == "worker")
        .or((!spec.containers.is_empty()).then_some(0))
}

/// The name of a run's worker container (empty when the template has no container).
pub fn worker_container(run: &BatchRun) -> String {
    run.spec
        .template
        .spec
        .as_ref()
        .and_then(|pod| worker_index(pod).map(|i| pod.containers[i].name.clone()))
        .unwrap_or_default()
}

/// The threshold of the SDKs' in-process guard: the run's, or, when the operator may grow a
/// worker in place (a memory ceiling is set), halfway from it to the limit, so that the
/// operator's guard gets to resize first and the worker stops itself only if that is too late.
pub fn sdk_threshold(spec: &BatchRunSpec) -> u8 {
    let threshold = spec.memory_guard.threshold;
    match spec.resources.memory.max {
        Some(_) => threshold + (100 - threshold) / 2,
        None => threshold,
    }
}

/// What the guard measures one worker pod against.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerSpec {
    /// The worker container's name, the `container` label of its memory series.
    pub container: String,
    /// Its memory limit as written in the pod (`128Mi`) and in bytes; `None` without a
    /// readable, non-zero limit.
    pub limit: Option<(String, u64)>,
}

/// The worker container's name: the annotation the Job's template carries, else the pod
/// spec's worker (the container named `worker`, or the first), else the Job template's.
pub fn worker_container_of(pod: &Pod, job: Option<&Job>) -> Option<String> {
    let template = job.and_then(|j| j.spec.as_ref()).map(|s| &s.template);
    let annotated = pod
        .annotations()
        .get(WORKER_CONTAINER)
        .cloned()
        .or_else(|| {
            template
                .and_then(|t| {
                    t.metadata
                        .as_ref()?
                        .annotations
                        .as_ref()?
                        .get(WORKER_CONTAINER)
                })
                .cloned()
        });
    annotated
        .filter(|name| !name.is_empty())
        .or_else(|| pod.spec.as_ref().and_then(worker_name))
        .or_else(|| template.and_then(|t| t.spec.as_ref()).and_then(worker_name))
}

/// The pod's worker container and its memory limit (from the pod spec, else the Job's
/// template); `None` when no worker container can be named.
pub fn worker_of(pod: &Pod, job: Option<&Job>) -> Option<WorkerSpec> {
    let container = worker_container_of(pod, job)?;
    let template = job
        .and_then(|j| j.spec.as_ref())
        .and_then(|s| s.template.spec.as_ref());
    // A limit grown in place counts once the kubelet applied it (the pod's status says so);
    // until then the spec holds what was asked, not what the worker runs under.
    let limit = applied_limit(pod, &container)
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|spec| memory_limit(spec, &container))
        })
        .or_else(|| template.and_then(|spec| memory_limit(spec, &container)));
    Some(WorkerSpec { container, limit })
}

fn applied_limit(pod: &Pod, container: &str) -> Option<(String, u64)> {
    let resources = container_status(pod, container)?.resources.as_ref();
    readable_limit(resources.and_then(|r| r.limits.as_ref()))
}

fn worker_name(spec: &PodSpec) -> Option<String> {
    worker_index(spec).map(|i| spec.containers[i].name.clone())
}

fn memory_limit(spec: &PodSpec, container: &str) -> Option<(String, u64)> {
    let resources = spec.containers.iter().find(|c| c.name == container)?;
    readable_limit(resources.resources.as_ref().and_then(|r| r.limits.as_ref()))
}

/// A memory limit that can be measured against: readable and not zero.
fn readable_limit(limits: Option<&BTreeMap<String, Quantity>>) -> Option<(String, u64)> {
    let (text, bytes) = memory_of(limits).filter(|(_, bytes)| *bytes > 0)?;
    Some((text.to_string(), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn container(name: &str, limit: Option<&str>) -> serde_json::Value {
        match limit {
            Some(limit) => json!({"name": name, "resources": {"limits": {"memory": limit}}}),
            None => json!({"name": name}),
        }
    }

    fn job(annotation: Option<&str>, containers: serde_json::Value) -> Job {
        let annotations = annotation.map(|a| json!({WORKER_CONTAINER: a}));
        serde_json::from_value(json!({
            "metadata": {"name": "j"},
            "spec": {"template": {"metadata": {"annotations": annotations}, "spec": {"containers": containers}}}
        }))
        .unwrap()
    }

    #[test]
    fn the_pods_own_limit_counts_not_the_jobs() {
        let p = pod(json!({"spec": {"containers": [container("worker", Some("128Mi"))]}}));
        let j = job(None, json!([container("worker", Some("1Gi"))]));
        let spec = worker_of(&p, Some(&j)).unwrap();
        assert_eq!(spec.container, "worker");
        assert_eq!(spec.limit, Some(("128Mi".to_string(), 128 << 20)));
    }

    #[test]
    fn a_pod_without_a_limit_is_measured_against_its_jobs_template() {
        let p = pod(json!({"spec": {"containers": [container("worker", None)]}}));
        let j = job(None, json!([container("worker", Some("256Mi"))]));
        assert_eq!(
            worker_of(&p, Some(&j)).unwrap().limit,
            Some(("256Mi".to_string(), 256 << 20))
        );
        assert_eq!(
            worker_of(&p, None).unwrap().limit,
            None,
            "no limit, no guess"
        );
    }

    #[test]
    fn the_annotation_names_the_worker_whatever_the_order_of_containers() {
        // A webhook put a sidecar first; the worker is not called `worker`.
        let p = pod(json!({
            "metadata": {"annotations": {WORKER_CONTAINER: "main"}},
            "spec": {"containers": [container("istio-proxy", Some("64Mi")), container("main", Some("2Gi"))]}
        }));
        let spec = worker_of(&p, None).unwrap();
        assert_eq!(spec.container, "main");
        assert_eq!(spec.limit.unwrap().1, 2 << 30);
    }

    #[test]
    fn the_jobs_annotation_names_the_worker_when_the_pod_lost_it() {
        let p = pod(
            json!({"spec": {"containers": [container("a", None), container("b", Some("1Gi"))]}}),
        );
        let j = job(
            Some("b"),
            json!([container("a", None), container("b", Some("1Gi"))]),
        );
        assert_eq!(worker_container_of(&p, Some(&j)).as_deref(), Some("b"));
        assert_eq!(
            worker_container_of(&p, None).as_deref(),
            Some("a"),
            "the first"
        );
    }

    #[test]
    fn older_pods_fall_back_to_the_container_named_worker() {
        let p = pod(
            json!({"spec": {"containers": [container("sidecar", None), container("worker", Some("1Gi"))]}}),
        );
        assert_eq!(worker_container_of(&p, None).as_deref(), Some("worker"));
        let bare = pod(json!({"metadata": {"name": "p"}}));
        assert_eq!(worker_of(&bare, None), None);
    }

    #[test]
    fn a_zero_or_unreadable_limit_is_no_limit() {
        let p = pod(json!({"spec": {"containers": [container("worker", Some("0"))]}}));
        assert_eq!(worker_of(&p, None).unwrap().limit, None);
    }
}
