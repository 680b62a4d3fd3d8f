//! Runs that cannot make progress, in words for the `Stalled` condition (pure): Job creation
//! the apiserver refuses, Jobs whose pod is refused, and workers that cannot start.

use std::time::Duration;

use jiff::Timestamp;

use super::Observed;

/// Why a run is held back.
#[derive(Clone, Debug, PartialEq)]
pub struct Stall {
    /// `JobRefused`, `PodRefused`, `NoPod` or `WorkerCannotStart`.
    pub reason: String,
    pub message: String,
}

/// The first delay after a refused Job creation; it doubles with each refusal in a row.
const REFUSAL_BASE: Duration = Duration::from_secs(5);
/// The longest delay between two tries of a refused Job creation.
const REFUSAL_MAX: Duration = Duration::from_secs(300);

/// How long to wait before creating a Job again after `times` refusals in a row.
pub fn refusal_delay(times: u32) -> Duration {
    let doublings = times.saturating_sub(1).min(16);
    REFUSAL_BASE.saturating_mul(1 << doublings).min(REFUSAL_MAX)
}

/// What holds the run back now, if anything; and when a batch still within its start
/// timeout would cross it, so the run is looked at again then even if nothing changes.
pub fn stall(observed: &Observed) -> (Option<Stall>, Option<Duration>) {
    let now = observed.now;
    if let Some(refusal) = observed.refused {
        // Times, not durations: the status does not change while nothing does.
        let stall = Stall {
            reason: "JobRefused".into(),
            message: format!(
                "the apiserver refused to create a batch Job ({}): {} (refused {} times in a row; next try at {})",
                refusal.code,
                refusal.message,
                refusal.times,
                refusal
                    .retry_at
                    .round(jiff::Unit::Second)
                    .unwrap_or(refusal.retry_at)
            ),
        };
        return (Some(stall), None);
    }
    let timeout = Duration::from_secs(u64::from(observed.spec.start_timeout_seconds));
    let mut found: Vec<Stall> = vec![];
    let mut next: Option<Duration> = None;
    // A stall counts once it has lasted the start timeout; until then, when it will have.
    let mut overdue = |found: &mut Vec<Stall>, since: Timestamp, stall: Stall| {
        let due = since + timeout;
        if due <= now {
            found.push(stall);
        } else {
            let wait = due.duration_since(now).unsigned_abs();
            next = Some(next.map_or(wait, |n: Duration| n.min(wait)));
        }
    };
    for attempt in observed.attempts.iter().filter(|a| a.is_alive()) {
        let live_pods: Vec<_> = attempt.pods.iter().filter(|p| !p.deleting).collect();
        if let Some(job) = &attempt.job
            && live_pods.is_empty()
        {
            if let Some(why) = &job.pod_refused {
                found.push(Stall {
                    reason: "PodRefused".into(),
                    message: format!("Job {} cannot create its worker pod: {why}", job.name),
                });
            } else if let Some(created) = job.created {
                overdue(
                    &mut found,
                    created,
                    Stall {
                        reason: "NoPod".into(),
                        message: format!("Job {} has had no worker pod since {created}", job.name),
                    },
                );
            }
        }
        for pod in live_pods.iter().filter(|p| p.exit.is_none()) {
            if let Some(waiting) = &pod.waiting {
                let detail = if waiting.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", waiting.message)
                };
                overdue(
                    &mut found,
                    waiting.since,
                    Stall {
                        reason: "WorkerCannotStart".into(),
                        message: format!(
                            "pod {} has not started since {}: {}{detail}",
                            pod.name, waiting.since, waiting.reason
                        ),
                    },
                );
            }
        }
    }
    let stall = found.first().cloned().map(|mut first| {
        if found.len() > 1 {
            first.message += &format!(" (and {} more batches held back)", found.len() - 1);
        }
        first
    });
    (stall, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RecordRange;
    use crate::api::{BatchRunSpec, BatchRunStatus};
    use crate::plan::{JobState, NotStarted, ObservedAttempt, PodState, Refusal};

    fn spec() -> BatchRunSpec {
        serde_json::from_value(serde_json::json!({
            "input": {"range": {"start": 0, "end": 100}, "batchSize": 10},
            "template": {"spec": {"containers": [{"name": "worker", "image": "w"}]}},
            "resources": {"memory": {"request": "1Gi", "limit": "2Gi"}},
            "startTimeoutSeconds": 120
        }))
        .unwrap()
    }

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn observe<'a>(
        spec: &'a BatchRunSpec,
        status: &'a BatchRunStatus,
        attempts: &'a [ObservedAttempt],
        refused: Option<&'a Refusal>,
        now: Timestamp,
    ) -> Observed<'a> {
        Observed {
            run_name: "run",
            run_uid: "uid",
            generation: 1,
            spec,
            status,
            attempts,
            now,
            memory: None,
            seat: None,
            retry_request: None,
            refused,
        }
    }

    fn job(name: &str, pod_refused: Option<&str>) -> JobState {
        JobState {
            name: name.into(),
            deleting: false,
            finished: None,
            created: Some(t(0)),
            pod_refused: pod_refused.map(String::from),
        }
    }

    fn attempt(start: u64, job: JobState, pods: Vec<PodState>) -> ObservedAttempt {
        ObservedAttempt {
            range: RecordRange::new(start, start + 10),
            attempt: 1,
            job: Some(job),
            pods,
        }
    }

    fn waiting_pod(name: &str, reason: &str) -> PodState {
        PodState {
            name: name.into(),
            holds_result: true,
            deleting: false,
            exit: None,
            guard_action: None,
            memory_limit: None,
            resizes: 0,
            ended: false,
            waiting: Some(NotStarted {
                reason: reason.into(),
                message: "Back-off pulling image \"w\"".into(),
                since: t(0),
            }),
        }
    }

    #[test]
    fn a_worker_that_cannot_start_stalls_the_run_after_the_start_timeout() {
        let (spec, status) = (spec(), BatchRunStatus::default());
        let attempts = [attempt(
            0,
            job("j0", None),
            vec![waiting_pod("p0", "ImagePullBackOff")],
        )];
        let (early, next) = stall(&observe(&spec, &status, &attempts, None, t(30)));
        assert_eq!(early, None, "within the start timeout");
        assert_eq!(
            next,
            Some(Duration::from_secs(90)),
            "looked at again when it is due"
        );
        let (late, _) = stall(&observe(&spec, &status, &attempts, None, t(121)));
        let late = late.unwrap();
        assert_eq!(late.reason, "WorkerCannotStart");
        assert!(
            late.message.starts_with(
                "pod p0 has not started since 2027-01-15T08:00:00Z: ImagePullBackOff: Back-off"
            ),
            "{}",
            late.message
        );
    }

    #[test]
    fn a_refused_pod_stalls_the_run_at_once_and_names_the_job() {
        let (spec, status) = (spec(), BatchRunStatus::default());
        let attempts = [
            attempt(
                0,
                job(
                    "j0",
                    Some("pods \"j0-x\" is forbidden: exceeded quota: pods"),
                ),
                vec![],
            ),
            attempt(10, job("j1", Some("exceeded quota")), vec![]),
        ];
        let (found, _) = stall(&observe(&spec, &status, &attempts, None, t(1)));
        let found = found.unwrap();
        assert_eq!(found.reason, "PodRefused");
        assert!(
            found.message.contains(
                "Job j0 cannot create its worker pod: pods \"j0-x\" is forbidden: exceeded quota"
            ),
            "{}",
            found.message
        );
        assert!(
            found.message.ends_with("(and 1 more batches held back)"),
            "{}",
            found.message
        );
    }

    #[test]
    fn a_job_without_pod_for_too_long_stalls_the_run() {
        let (spec, status) = (spec(), BatchRunStatus::default());
        let attempts = [attempt(0, job("j0", None), vec![])];
        assert_eq!(
            stall(&observe(&spec, &status, &attempts, None, t(60))).0,
            None
        );
        let found = stall(&observe(&spec, &status, &attempts, None, t(200)))
            .0
            .unwrap();
        assert_eq!(
            (found.reason.as_str(), found.message.as_str()),
            (
                "NoPod",
                "Job j0 has had no worker pod since 2027-01-15T08:00:00Z"
            )
        );
    }

    #[test]
    fn a_refused_job_creation_is_reported_with_the_apiservers_words() {
        let (spec, status) = (spec(), BatchRunStatus::default());
        let refusal = Refusal {
            code: 422,
            message: "Job.batch \"j\" is invalid: spec.template.spec.containers[0].resources.requests: Invalid value: \"2\": must be less than or equal to cpu limit of 1".into(),
            times: 3,
            retry_at: t(20),
        };
        let found = stall(&observe(&spec, &status, &[], Some(&refusal), t(0)))
            .0
            .unwrap();
        assert_eq!(found.reason, "JobRefused");
        assert!(
            found.message.contains("(422): Job.batch \"j\" is invalid"),
            "{}",
            found.message
        );
        assert!(
            found.message.contains("next try at 2027-01-15T08:00:20Z"),
            "{}",
            found.message
        );
    }

    #[test]
    fn running_and_finished_workers_do_not_stall() {
        let (spec, status) = (spec(), BatchRunStatus::default());
        let mut running = waiting_pod("p0", "x");
        running.waiting = None;
        let attempts = [attempt(0, job("j0", None), vec![running])];
        assert_eq!(
            stall(&observe(&spec, &status, &attempts, None, t(1000))),
            (None, None)
        );
    }

    #[test]
    fn refusals_back_off_exponentially_up_to_five_minutes() {
        let delays: Vec<u64> = (1..=8).map(|n| refusal_delay(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(refusal_delay(u32::MAX), Duration::from_secs(300));
    }
}
