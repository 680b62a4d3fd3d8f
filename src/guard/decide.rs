//! The guard's decisions (pure): which workers to drain, restart or merely report, which
//! earlier actions still miss their delete, and how a blind guard names the pods it cannot see.

use crate::api::labels::GuardMark;
use crate::api::{GuardAction, MemoryGuard};

/// Grace period of a Restart: the worker is not expected to checkpoint.
pub const RESTART_GRACE_SECONDS: i64 = 5;

/// At most this many pods are named when the guard cannot see them; the rest are counted.
pub const MAX_NAMED_PODS: usize = 5;

/// A live worker as the guard sees it: not being deleted, its worker container running.
#[derive(Clone, Debug, PartialEq)]
pub struct Worker<'a> {
    pub pod: &'a str,
    /// What the guard already did to this pod, read back from its annotations.
    pub mark: Option<GuardMark>,
    /// Latest fresh memory sample as a fraction of the pod's own limit; `None` when there is
    /// none — missing data is never read as zero.
    pub fraction: Option<f64>,
}

/// What to do with one worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub pod: String,
    pub action: GuardAction,
    pub percent: u32,
    /// Grace period for the pod deletion (none for Observe).
    pub grace_seconds: Option<i64>,
    /// The pod already carries the mark and only its delete is left: the delete failed
    /// (throttled, a server error, a webhook's denial) or the operator died in between.
    pub retry: bool,
    /// Why the worker is stopped rather than grown in place, when it could have been.
    pub note: Option<String>,
}

/// New actions: unmarked workers at or above the threshold.
pub fn decide(guard: &MemoryGuard, workers: &[Worker]) -> Vec<Decision> {
    workers
        .iter()
        .filter(|w| w.mark.is_none())
        .filter_map(|w| {
            let fraction = w.fraction?;
            guard.at_threshold(fraction).then(|| Decision {
                pod: w.pod.to_string(),
                action: guard.action,
                percent: (fraction * 100.0).round() as u32,
                grace_seconds: grace(guard, guard.action),
                retry: false,
                note: None,
            })
        })
        .collect()
}

/// Earlier actions whose delete is still owed: a live worker marked for Drain or Restart is
/// deleted again, whatever its memory now and whether or not the guard can see it. The
/// action is the one recorded, not the run's current setting.
pub fn unfinished(guard: &MemoryGuard, workers: &[Worker]) -> Vec<Decision> {
    workers
        .iter()
        .filter_map(|w| {
            let mark = w.mark?;
            let grace_seconds = grace(guard, mark.action)?;
            Some(Decision {
                pod: w.pod.to_string(),
                action: mark.action,
                percent: mark.percent,
                grace_seconds: Some(grace_seconds),
                retry: true,
                note: None,
            })
        })
        .collect()
}

fn grace(guard: &MemoryGuard, action: GuardAction) -> Option<i64> {
    match action {
        GuardAction::Drain => Some(guard.drain_grace_period_seconds),
        GuardAction::Restart => Some(RESTART_GRACE_SECONDS.min(guard.drain_grace_period_seconds)),
        GuardAction::Observe => None,
    }
}

/// Why the guard is blind to some live workers; names a bounded number of them, since the
/// reason reaches a condition and an Event.
pub fn unseen_reason(pods: &[&str]) -> String {
    let named = pods
        .iter()
        .take(MAX_NAMED_PODS)
        .copied()
        .collect::<Vec<_>>();
    let noun = if pods.len() == 1 { "pod" } else { "pods" };
    let mut reason = format!("no fresh memory sample for {noun} {}", named.join(", "));
    if pods.len() > MAX_NAMED_PODS {
        reason.push_str(&format!(" and {} more", pods.len() - MAX_NAMED_PODS));
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(action: GuardAction) -> MemoryGuard {
        MemoryGuard {
            action,
            ..Default::default()
        }
    }

    fn worker(pod: &str, fraction: Option<f64>) -> Worker<'_> {
        Worker {
            pod,
            mark: None,
            fraction,
        }
    }

    fn marked(pod: &str, action: GuardAction, fraction: Option<f64>) -> Worker<'_> {
        Worker {
            pod,
            mark: Some(GuardMark {
                action,
                percent: 91,
            }),
            fraction,
        }
    }

    #[test]
    fn workers_at_or_above_the_threshold_are_drained() {
        let workers = [
            worker("low", Some(0.5)),
            worker("edge", Some(0.85)),
            worker("high", Some(0.97)),
        ];
        let decisions = decide(&guard(GuardAction::Drain), &workers);
        let pods: Vec<_> = decisions
            .iter()
            .map(|d| (d.pod.as_str(), d.percent))
            .collect();
        assert_eq!(pods, vec![("edge", 85), ("high", 97)]);
        assert!(decisions.iter().all(|d| d.grace_seconds == Some(60)));
        assert!(decisions.iter().all(|d| !d.retry));
    }

    #[test]
    fn missing_samples_are_not_zero_and_not_pressure() {
        assert!(decide(&guard(GuardAction::Drain), &[worker("blind", None)]).is_empty());
    }

    #[test]
    fn a_worker_is_acted_on_once() {
        let acted = marked("p", GuardAction::Drain, Some(0.99));
        assert!(decide(&guard(GuardAction::Drain), &[acted]).is_empty());
    }

    #[test]
    fn restart_uses_a_short_grace_and_observe_none() {
        let restart = decide(&guard(GuardAction::Restart), &[worker("p", Some(0.9))]);
        assert_eq!(restart[0].grace_seconds, Some(RESTART_GRACE_SECONDS));
        let observe = decide(&guard(GuardAction::Observe), &[worker("p", Some(0.9))]);
        assert_eq!(
            (observe[0].action, observe[0].grace_seconds),
            (GuardAction::Observe, None)
        );
    }

    #[test]
    fn threshold_is_configurable() {
        let guard = MemoryGuard {
            threshold: 50,
            ..Default::default()
        };
        assert_eq!(decide(&guard, &[worker("p", Some(0.55))]).len(), 1);
    }

    #[test]
    fn a_marked_worker_still_running_is_deleted_again() {
        // Its memory fell, or the guard is blind: the owed delete does not depend on it.
        let workers = [
            marked("drained", GuardAction::Drain, Some(0.2)),
            marked("blind", GuardAction::Drain, None),
            worker("fresh", Some(0.95)),
        ];
        let retries = unfinished(&guard(GuardAction::Drain), &workers);
        let pods: Vec<_> = retries
            .iter()
            .map(|d| (d.pod.as_str(), d.percent, d.retry))
            .collect();
        assert_eq!(pods, vec![("drained", 91, true), ("blind", 91, true)]);
        assert!(retries.iter().all(|d| d.grace_seconds == Some(60)));
    }

    #[test]
    fn a_retry_repeats_the_recorded_action_not_the_current_one() {
        let workers = [marked("p", GuardAction::Restart, None)];
        let retries = unfinished(&guard(GuardAction::Drain), &workers);
        assert_eq!(
            (retries[0].action, retries[0].grace_seconds),
            (GuardAction::Restart, Some(RESTART_GRACE_SECONDS))
        );
    }

    #[test]
    fn an_observed_worker_owes_no_delete() {
        let workers = [marked("p", GuardAction::Observe, Some(0.99))];
        assert!(unfinished(&guard(GuardAction::Drain), &workers).is_empty());
        assert!(decide(&guard(GuardAction::Drain), &workers).is_empty());
    }

    #[test]
    fn a_blind_guard_names_at_most_five_pods() {
        assert_eq!(unseen_reason(&["a"]), "no fresh memory sample for pod a");
        assert_eq!(
            unseen_reason(&["a", "b"]),
            "no fresh memory sample for pods a, b"
        );
        let many: Vec<String> = (1..=12).map(|i| format!("p{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            unseen_reason(&many),
            "no fresh memory sample for pods p1, p2, p3, p4, p5 and 7 more"
        );
        assert!(!unseen_reason(&many[..5]).contains("more"));
    }
}
