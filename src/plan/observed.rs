//! What the planner sees: a run and the attempts (Jobs and their pods) that belong to it,
//! reduced to the facts that matter. The controller builds these from the API objects.

use jiff::Timestamp;

use super::RunMemory;
use crate::api::RecordRange;
use crate::api::{BatchRunSpec, GuardAction};

/// One attempt: a Job for a range, its worker pod, or both.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedAttempt {
    pub range: RecordRange,
    pub attempt: u32,
    pub job: Option<JobState>,
    pub pods: Vec<PodState>,
}

/// What matters about a batch Job.
#[derive(Clone, Debug, PartialEq)]
pub struct JobState {
    pub name: String,
    /// Deletion requested (by us, the TTL controller or a user).
    pub deleting: bool,
    /// Set once the Job has a terminal condition.
    pub finished: Option<JobFinish>,
    pub created: Option<Timestamp>,
    /// Why the Job controller could not create the Job's pod (its `FailedCreate` Event:
    /// Pod Security, ResourceQuota, a webhook), when the operator looked it up.
    pub pod_refused: Option<String>,
}

/// A Job's terminal condition.
#[derive(Clone, Debug, PartialEq)]
pub struct JobFinish {
    pub failed: bool,
    pub reason: String,
    pub message: String,
    pub at: Option<Timestamp>,
}

/// What matters about a worker pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodState {
    pub name: String,
    /// Our `batchguard.dev/result` finalizer is still on the pod.
    pub holds_result: bool,
    pub deleting: bool,
    /// Set once the worker container (or the pod) has terminated.
    pub exit: Option<WorkerExit>,
    /// The memory guard stopped (or reported) this worker.
    pub guard_action: Option<GuardAction>,
    /// What keeps the worker from starting (unschedulable, image, container config).
    pub waiting: Option<NotStarted>,
    /// Every container has ended (phase Succeeded or Failed): the pod holds no memory.
    pub ended: bool,
    /// The worker container's memory limit in bytes, as the pod was given it.
    pub memory_limit: Option<u64>,
    /// Times the guard grew this pod's memory in place.
    pub resizes: u32,
}

/// A worker that has not started, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct NotStarted {
    /// `Unschedulable`, `ImagePullBackOff`, `CreateContainerConfigError`, …
    pub reason: String,
    pub message: String,
    /// Since when, as far as the API tells.
    pub since: Timestamp,
}

/// How the worker container ended.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerExit {
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub finished_at: Option<Timestamp>,
}

/// Everything one reconcile knows.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    pub run_name: &'a str,
    /// Seeds the retry jitter, so a recreated run with the same name spreads differently.
    pub run_uid: &'a str,
    pub generation: i64,
    pub spec: &'a BatchRunSpec,
    pub status: &'a crate::api::BatchRunStatus,
    pub attempts: &'a [ObservedAttempt],
    pub now: Timestamp,
    /// What the memory guard sees of this run; `None` when the guard is off.
    pub memory: Option<&'a RunMemory>,
    /// What the run's BatchQueue allows now; `None` for a run without a queue.
    pub seat: Option<Seat>,
    /// The run's `batchguard.dev/retry-failed` annotation: a new value re-runs failed ranges.
    pub retry_request: Option<&'a str>,
    /// The apiserver refused the run's last Job creation; `None` once one succeeded.
    pub refused: Option<&'a Refusal>,
}

/// The apiserver refused to create a batch Job (422 invalid, 403 forbidden by quota or
/// admission, …): the run says so and tries again after a growing delay.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    pub code: u16,
    pub message: String,
    /// Refusals in a row.
    pub times: u32,
    /// No Job is created before this.
    pub retry_at: Timestamp,
}

impl Refusal {
    /// A spec the apiserver will never accept, as opposed to a refusal that may pass later.
    pub fn is_invalid_spec(&self) -> bool {
        matches!(self.code, 400 | 422)
    }
}

/// A queued run's share of its BatchQueue at this moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Seat {
    pub queue: String,
    /// New batches the queue lets this run start now.
    pub granted: usize,
    /// Why batches wait (the `Queued` condition's reason and message); `None` when none do.
    pub waiting: Option<(String, String)>,
}

impl ObservedAttempt {
    /// Still holding (or about to hold) a worker: counts against parallelism.
    pub fn is_alive(&self) -> bool {
        match &self.job {
            // Until its worker ended (its memory is free then), even if the Job controller has
            // not yet marked the Job finished: like the Job controller's own `active` count.
            Some(job) => !job.deleting && job.finished.is_none() && !self.worker_ended(),
            None => self.pods.iter().any(|p| p.exit.is_none() && !p.deleting),
        }
    }

    /// The memory limit the attempt's worker ran with.
    pub fn memory_limit(&self) -> Option<u64> {
        self.pods.iter().find_map(|p| p.memory_limit)
    }

    /// The worker has ended, or the Job gave up without a worker result.
    pub fn worker_ended(&self) -> bool {
        self.pods.iter().any(|p| p.exit.is_some())
            || self
                .job
                .as_ref()
                .is_some_and(|j| j.finished.as_ref().is_some_and(|f| f.failed))
    }
}
