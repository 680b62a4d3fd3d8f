//! Reducing a run's Jobs and pods to the planner's view (pure).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::labels::{JOB_NAME, RESULT_FINALIZER, batch_of};
use super::worker_pod::worker_container_of;
use crate::guard::marked_action;
use crate::plan::{JobFinish, JobState, ObservedAttempt, PodState, RecordRange, WorkerExit};

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
            let worker = worker_container_of(pod, job);
            entry(&mut by_batch, key).pods.push(pod_state(
                pod,
                worker.as_deref().unwrap_or(worker_container),
            ));
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
    let finished = job
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .find_map(|c| {
            let terminal = c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed");
            terminal.then(|| JobFinish {
                failed: c.type_ == "Failed",
                reason: c.reason.clone().unwrap_or_default(),
                message: c.message.clone().unwrap_or_default(),
            })
        });
    JobState {
        name: job.name_any(),
        deleting: job.metadata.deletion_timestamp.is_some(),
        finished,
    }
}

fn pod_state(pod: &Pod, worker_container: &str) -> PodState {
    let status = pod.status.as_ref();
    let terminated = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|all| all.iter().find(|c| c.name == worker_container))
        .and_then(|c| c.state.as_ref()?.terminated.as_ref());
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let exit = match terminated {
        Some(t) => Some(WorkerExit {
            exit_code: t.exit_code,
            reason: t.reason.clone().unwrap_or_default(),
            message: t.message.clone().unwrap_or_default(),
            finished_at: t.finished_at.as_ref().map(|t| t.0),
        }),
        // The pod ended without a container record (evicted, node lost): a failure.
        None if phase == "Failed" || phase == "Succeeded" => Some(WorkerExit {
            exit_code: if phase == "Succeeded" { 0 } else { -1 },
            reason: status
                .and_then(|s| s.reason.clone())
                .unwrap_or_else(|| "PodFailed".into()),
            message: status.and_then(|s| s.message.clone()).unwrap_or_default(),
            finished_at: None,
        }),
        None => None,
    };
    PodState {
        name: pod.name_any(),
        holds_result: pod.finalizers().iter().any(|f| f == RESULT_FINALIZER),
        deleting: pod.metadata.deletion_timestamp.is_some(),
        exit,
        guard_action: marked_action(pod.annotations()),
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
