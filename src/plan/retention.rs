//! What happens to a settled attempt's Job and pod (pure): the pod's result finalizer goes as
//! soon as the result is in the status (a failed worker's pod waits `retention.failedSeconds`,
//! for `kubectl logs`), the Job is removed after its retention, and a pod whose worker ended
//! while a sidecar keeps it running is stopped.

use std::time::Duration;

use jiff::Timestamp;

use super::ObservedAttempt;
use crate::api::Retention;

/// The actions for one settled attempt.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cleanup {
    /// Pods whose result finalizer can go.
    pub release: Vec<String>,
    /// The attempt's Job, once its retention has passed (its pods go with it).
    pub remove_job: Option<String>,
    /// Pods still running after their worker ended (sidecars), to stop now.
    pub stop: Vec<String>,
    /// When something above falls due that is not due yet.
    pub recheck: Option<Duration>,
}

/// `failed`: the attempt failed (its pod and Job are kept longer, for `kubectl logs`).
pub fn clean_up(
    attempt: &ObservedAttempt,
    failed: bool,
    retention: &Retention,
    now: Timestamp,
) -> Cleanup {
    let seconds = |s: i32| Duration::from_secs(s.max(0) as u64);
    let (keep_pod, keep_job) = if failed {
        (
            seconds(retention.failed_seconds),
            seconds(retention.failed_seconds),
        )
    } else {
        (Duration::ZERO, seconds(retention.succeeded_seconds))
    };
    // From when the worker ended; without a time (an evicted pod), retention starts now and
    // is over: a time that is always `now` would never fall due.
    let ended = attempt
        .pods
        .iter()
        .find_map(|p| p.exit.as_ref()?.finished_at)
        .or_else(|| attempt.job.as_ref()?.finished.as_ref()?.at);
    let due = |keep: Duration| ended.map_or(now, |t| t + keep);
    let mut cleanup = Cleanup::default();
    let mut later = |at: Timestamp| {
        let wait = at.duration_since(now).unsigned_abs();
        cleanup.recheck = Some(cleanup.recheck.map_or(wait, |r: Duration| r.min(wait)));
    };
    let release_at = due(keep_pod);
    let mut release = vec![];
    for pod in attempt
        .pods
        .iter()
        .filter(|p| p.holds_result && p.exit.is_some())
    {
        if release_at <= now {
            release.push(pod.name.clone());
        } else {
            later(release_at);
        }
    }
    let mut remove_job = None;
    if let Some(job) = attempt.job.as_ref().filter(|j| !j.deleting) {
        let remove_at = due(keep_job);
        if remove_at <= now {
            remove_job = Some(job.name.clone());
        } else {
            later(remove_at);
        }
    }
    // A succeeded worker's pod has nothing more to show; removing the Job stops it anyway.
    let stop = if failed || remove_job.is_some() {
        vec![]
    } else {
        let running = |p: &&super::PodState| p.exit.is_some() && !p.ended && !p.deleting;
        attempt
            .pods
            .iter()
            .filter(running)
            .map(|p| p.name.clone())
            .collect()
    };
    Cleanup {
        release,
        remove_job,
        stop,
        ..cleanup
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RecordRange;
    use crate::plan::{JobState, PodState, WorkerExit};

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn attempt(finished_at: Option<Timestamp>, pod_ended: bool) -> ObservedAttempt {
        ObservedAttempt {
            range: RecordRange::new(0, 10),
            attempt: 1,
            job: Some(JobState {
                name: "job".into(),
                deleting: false,
                finished: None,
                created: Some(t(-100)),
                pod_refused: None,
            }),
            pods: vec![PodState {
                name: "pod".into(),
                holds_result: true,
                deleting: false,
                exit: Some(WorkerExit {
                    exit_code: 0,
                    reason: "Completed".into(),
                    message: String::new(),
                    finished_at,
                }),
                guard_action: None,
                memory_limit: None,
                resizes: 0,
                waiting: None,
                ended: pod_ended,
            }],
        }
    }

    fn retention(succeeded: i32, failed: i32) -> Retention {
        Retention {
            succeeded_seconds: succeeded,
            failed_seconds: failed,
        }
    }

    #[test]
    fn a_succeeded_attempt_is_released_and_removed_at_once_by_default() {
        let done = clean_up(&attempt(Some(t(0)), true), false, &retention(0, 3600), t(1));
        assert_eq!(done.release, ["pod"]);
        assert_eq!(done.remove_job.as_deref(), Some("job"));
        assert!(done.stop.is_empty() && done.recheck.is_none());
    }

    #[test]
    fn a_failed_attempt_keeps_its_job_and_pod_for_the_failed_retention() {
        let kept = clean_up(&attempt(Some(t(0)), true), true, &retention(0, 300), t(10));
        assert!(
            kept.release.is_empty() && kept.remove_job.is_none(),
            "{kept:?}"
        );
        assert_eq!(kept.recheck, Some(Duration::from_secs(290)));
        let gone = clean_up(&attempt(Some(t(0)), true), true, &retention(0, 300), t(300));
        assert_eq!((gone.release.len(), gone.remove_job.is_some()), (1, true));
    }

    #[test]
    fn a_succeeded_job_kept_for_a_while_still_has_its_sidecars_stopped() {
        let kept = clean_up(
            &attempt(Some(t(0)), false),
            false,
            &retention(600, 3600),
            t(5),
        );
        assert_eq!(
            kept.release,
            ["pod"],
            "the result is counted: the finalizer goes"
        );
        assert_eq!(kept.remove_job, None);
        assert_eq!(
            kept.stop,
            ["pod"],
            "the worker ended, its sidecar must not run on"
        );
        let ended = clean_up(
            &attempt(Some(t(0)), true),
            false,
            &retention(600, 3600),
            t(5),
        );
        assert!(
            ended.stop.is_empty(),
            "a pod that ended is not stopped again"
        );
    }

    #[test]
    fn without_an_end_time_retention_is_over_at_once_rather_than_never() {
        let done = clean_up(&attempt(None, true), true, &retention(0, 3600), t(5));
        assert_eq!((done.release.len(), done.remove_job.is_some()), (1, true));
    }
}
