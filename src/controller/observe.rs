//! Reducing a run's Jobs and pods to the planner's view (pure).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::api::RecordRange;
use crate::api::kube_facts::{finished_condition, pod_ended, pod_phase, terminated};
use crate::api::labels::{GuardMark, JOB_NAME, RESULT_FINALIZER, RUN_UID, batch_of};
use crate::api::worker_pod::worker_of;
use crate::guard::resize::{resizes_of, sizes_of};
use crate::plan::{JobFinish, JobState, NotStarted, ObservedAttempt, PodState, WorkerExit};

/// What of the cluster belongs to one run, by ownership rather than labels alone: labels can
/// be copied onto any object, owner references to the run's Jobs only by the Job controller.
pub struct Owned<'a> {
    /// The run's Jobs: its labels and the run as their controller.
    pub jobs: Vec<&'a Job>,
    /// Pods controlled by one of those Jobs.
    pub pods: Vec<&'a Pod>,
    /// Pods that carry the run's labels and the result finalizer but no Job as controller:
    /// never read, and their finalizer is released so they can go.
    pub strangers: Vec<String>,
}

/// Sorts the Jobs and pods labelled with run `uid` into the run's own and strangers. A pod
/// whose controlling Job is not (yet) in the cache is neither: the next reconcile knows.
pub fn owned<'a>(
    uid: &str,
    jobs: impl IntoIterator<Item = &'a Job>,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Owned<'a> {
    let labelled =
        |labels: &BTreeMap<String, String>| labels.get(RUN_UID).map(String::as_str) == Some(uid);
    let jobs: Vec<&Job> = jobs
        .into_iter()
        .filter(|j| {
            labelled(j.labels()) && controller_uid(j.owner_references(), "BatchRun") == Some(uid)
        })
        .collect();
    let mut owned = Owned {
        jobs,
        pods: vec![],
        strangers: vec![],
    };
    for pod in pods.into_iter().filter(|p| labelled(p.labels())) {
        match controller_uid(pod.owner_references(), "Job") {
            Some(job) if owned.jobs.iter().any(|j| j.uid().as_deref() == Some(job)) => {
                owned.pods.push(pod)
            }
            Some(_) => {}
            None if pod.finalizers().iter().any(|f| f == RESULT_FINALIZER) => {
                owned.strangers.push(pod.name_any())
            }
            None => {}
        }
    }
    owned
}

fn controller_uid<'a>(
    owners: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
    kind: &str,
) -> Option<&'a str> {
    owners
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == kind)
        .map(|o| o.uid.as_str())
}

/// Groups the Jobs and pods of one run by (range, attempt). Each pod's worker container is
/// the one its own Job was built with; `worker_container` (the run's current one) only names
/// it for a pod that says nothing.
pub fn attempts<'a>(
    jobs: impl IntoIterator<Item = &'a Job>,
    pods: impl IntoIterator<Item = &'a Pod>,
    worker_container: &str,
) -> Vec<ObservedAttempt> {
    let mut by_batch: BTreeMap<(RecordRange, u32), ObservedAttempt> = BTreeMap::new();
    let mut job_of: BTreeMap<String, &Job> = BTreeMap::new();
    for job in jobs {
        if let Some(key) = batch_of(job.labels()) {
            entry(&mut by_batch, key).job = Some(job_state(job));
        }
        job_of.insert(job.name_any(), job);
    }
    for pod in pods {
        if let Some(key) = batch_of(pod.labels()) {
            let job = pod
                .labels()
                .get(JOB_NAME)
                .and_then(|j| job_of.get(j))
                .copied();
            let worker = worker_of(pod, job);
            let mut state = pod_state(
                pod,
                worker.as_ref().map_or(worker_container, |w| &w.container),
            );
            state.memory_limit = worker.and_then(|w| w.limit).map(|(_, bytes)| bytes);
            entry(&mut by_batch, key).pods.push(state);
        }
    }
    by_batch.into_values().collect()
}

fn entry(
    by_batch: &mut BTreeMap<(RecordRange, u32), ObservedAttempt>,
    (range, attempt): (RecordRange, u32),
) -> &mut ObservedAttempt {
    by_batch
        .entry((range, attempt))
        .or_insert_with(|| ObservedAttempt {
            range,
            attempt,
            job: None,
            pods: vec![],
        })
}

fn job_state(job: &Job) -> JobState {
    let finished = finished_condition(job).map(|c| JobFinish {
        failed: c.type_ == "Failed",
        reason: c.reason.clone().unwrap_or_default(),
        message: c.message.clone().unwrap_or_default(),
        at: c.last_transition_time.as_ref().map(|t| t.0),
    });
    JobState {
        name: job.name_any(),
        deleting: job.metadata.deletion_timestamp.is_some(),
        finished,
        created: job.creation_timestamp().map(|t| t.0),
        pod_refused: None,
    }
}

/// Container states that need a person, not time: the kubelet retries them, but without a
/// change to the image, the node or the referenced config they never pass.
const CANNOT_START: [&str; 7] = [
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Why a pod's worker has not started: unschedulable, or a container state of `CANNOT_START`.
fn waiting(pod: &Pod) -> Option<NotStarted> {
    let status = pod.status.as_ref()?;
    let since_created = || pod.creation_timestamp().map(|t| t.0);
    if let Some(unschedulable) = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    }) {
        return Some(NotStarted {
            reason: "Unschedulable".into(),
            message: unschedulable.message.clone().unwrap_or_default(),
            since: unschedulable
                .last_transition_time
                .as_ref()
                .map(|t| t.0)
                .or_else(since_created)?,
        });
    }
    let since = status
        .start_time
        .as_ref()
        .map(|t| t.0)
        .or_else(since_created)?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find_map(|c| {
            let waiting = c.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref()?;
            CANNOT_START.contains(&reason).then(|| NotStarted {
                reason: format!("{reason} (container {})", c.name),
                message: waiting.message.clone().unwrap_or_default(),
                since,
            })
        })
}

/// Resizes the kubelet applied: the last ask does not count until the pod runs under it.
fn applied_resizes(pod: &Pod, worker_container: &str) -> u32 {
    let asked = resizes_of(pod.annotations());
    let sizes = sizes_of(pod, worker_container);
    match sizes.asked {
        Some((limit, _)) if sizes.limit() < limit => asked.saturating_sub(1),
        _ => asked,
    }
}

fn pod_state(pod: &Pod, worker_container: &str) -> PodState {
    let status = pod.status.as_ref();
    let exit = match terminated(pod, worker_container) {
        Some(t) => Some(WorkerExit {
            exit_code: t.exit_code,
            reason: t.reason.clone().unwrap_or_default(),
            message: t.message.clone().unwrap_or_default(),
            finished_at: t.finished_at.as_ref().map(|t| t.0),
        }),
        // The pod ended without a container record (evicted, node lost): a failure.
        None if pod_ended(pod) => Some(WorkerExit {
            exit_code: if pod_phase(pod) == "Succeeded" { 0 } else { -1 },
            reason: status
                .and_then(|s| s.reason.clone())
                .unwrap_or_else(|| "PodFailed".into()),
            message: status.and_then(|s| s.message.clone()).unwrap_or_default(),
            finished_at: None,
        }),
        None => None,
    };
    PodState {
        waiting: if exit.is_none() { waiting(pod) } else { None },
        ended: pod_ended(pod),
        name: pod.name_any(),
        holds_result: pod.finalizers().iter().any(|f| f == RESULT_FINALIZER),
        deleting: pod.metadata.deletion_timestamp.is_some(),
        exit,
        guard_action: GuardMark::read(pod.annotations()).map(|mark| mark.action),
        memory_limit: None,
        resizes: applied_resizes(pod, worker_container),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(start: u64, end: u64, attempt: u32) -> serde_json::Value {
        json!({"batchguard.dev/range-start": start.to_string(), "batchguard.dev/range-end": end.to_string(),
               "batchguard.dev/attempt": attempt.to_string()})
    }

    #[test]
    fn jobs_and_pods_of_a_batch_are_grouped() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "j1", "labels": labels(0, 10, 1)},
            "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "m"}]}
        }))
        .unwrap();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p1", "labels": labels(0, 10, 1), "finalizers": ["batchguard.dev/result"]},
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": "worker", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "message": ""}}}]}
        }))
        .unwrap();
        let other: Pod = serde_json::from_value(
            json!({"metadata": {"name": "p2", "labels": labels(10, 20, 1)}}),
        )
        .unwrap();
        let attempts = attempts([&job], [&pod, &other], "worker");
        assert_eq!(attempts.len(), 2);
        let first = &attempts[0];
        assert_eq!(
            first
                .job
                .as_ref()
                .unwrap()
                .finished
                .as_ref()
                .unwrap()
                .reason,
            "BackoffLimitExceeded"
        );
        assert!(first.pods[0].holds_result);
        assert_eq!(first.pods[0].exit.as_ref().unwrap().exit_code, 137);
        assert!(
            attempts[1].pods[0].exit.is_none(),
            "a pod without status is still running"
        );
        assert!(attempts[1].is_alive());
    }

    fn owner(kind: &str, uid: &str) -> serde_json::Value {
        json!([{"apiVersion": "v1", "kind": kind, "name": "n", "uid": uid, "controller": true}])
    }

    #[test]
    fn only_pods_of_the_runs_own_jobs_are_read() {
        let run = json!({"batchguard.dev/run-uid": "run-1"});
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "j", "uid": "job-1", "labels": run, "ownerReferences": owner("BatchRun", "run-1")}
        }))
        .unwrap();
        let forged_job: Job = serde_json::from_value(json!({
            "metadata": {"name": "f", "uid": "job-2", "labels": run}
        }))
        .unwrap();
        let pod = |name: &str, owners: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name, "labels": run,
                "ownerReferences": owners, "finalizers": ["batchguard.dev/result"]}}))
            .unwrap()
        };
        let real = pod("real", owner("Job", "job-1"));
        let bare = pod("bare", json!([]));
        let of_forged_job = pod("of-forged", owner("Job", "job-2"));
        let of_unseen_job = pod("of-unseen", owner("Job", "job-3"));
        let as_replicaset = pod("rs", owner("ReplicaSet", "rs-1"));
        let sorted = owned(
            "run-1",
            [&job, &forged_job],
            [&real, &bare, &of_forged_job, &of_unseen_job, &as_replicaset],
        );
        assert_eq!(
            sorted.jobs.len(),
            1,
            "a Job the run does not control is not its own"
        );
        let read: Vec<_> = sorted.pods.iter().map(|p| p.name_any()).collect();
        assert_eq!(read, ["real"]);
        assert_eq!(
            sorted.strangers,
            ["bare", "rs"],
            "released: no Job controls them"
        );
        assert!(
            owned("run-2", [&job], [&real]).pods.is_empty(),
            "another run's pods are not read"
        );
    }

    #[test]
    fn a_pod_is_read_through_its_own_worker_container_after_a_rename() {
        // Built when the worker was `main`; the run's template calls it `worker` now.
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "labels": labels(0, 10, 1),
                         "annotations": {"batchguard.dev/worker-container": "main"}},
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": "main", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 143, "reason": "Error", "message": "{\"records\":5}"}}}]}
        }))
        .unwrap();
        let attempts = attempts([], [&pod], "worker");
        let exit = attempts[0].pods[0].exit.as_ref().unwrap();
        assert_eq!(
            (exit.exit_code, exit.message.as_str()),
            (143, "{\"records\":5}")
        );
    }

    #[test]
    fn evicted_pod_without_container_record_is_a_failure() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "labels": labels(0, 10, 1)},
            "status": {"phase": "Failed", "reason": "Evicted", "message": "node ran out of memory"}
        }))
        .unwrap();
        let attempts = attempts([], [&pod], "worker");
        let exit = attempts[0].pods[0].exit.as_ref().unwrap();
        assert_eq!((exit.exit_code, exit.reason.as_str()), (-1, "Evicted"));
    }
}
