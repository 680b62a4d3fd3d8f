//! The guard's decisions (pure): which workers to drain, restart or merely report.

use crate::api::{GuardAction, MemoryGuard};

/// Grace period of a Restart: the worker is not expected to checkpoint.
pub const RESTART_GRACE_SECONDS: i64 = 5;

/// A live worker as the guard sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Worker<'a> {
    pub pod: &'a str,
    /// The guard already acted on this pod (or it is being deleted anyway).
    pub acted: bool,
    /// Latest fresh memory sample as a fraction of the limit; `None` when there is none —
    /// missing data is never read as zero.
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
}

pub fn decide(guard: &MemoryGuard, workers: &[Worker]) -> Vec<Decision> {
    let threshold = f64::from(guard.threshold) / 100.0;
    workers
        .iter()
        .filter(|w| !w.acted)
        .filter_map(|w| {
            let fraction = w.fraction?;
            (fraction >= threshold).then(|| Decision {
                pod: w.pod.to_string(),
                action: guard.action,
                percent: (fraction * 100.0).round() as u32,
                grace_seconds: match guard.action {
                    GuardAction::Drain => Some(guard.drain_grace_period_seconds),
                    GuardAction::Restart => {
                        Some(RESTART_GRACE_SECONDS.min(guard.drain_grace_period_seconds))
                    }
                    GuardAction::Observe => None,
                },
            })
        })
        .collect()
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
            acted: false,
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
    }

    #[test]
    fn missing_samples_are_not_zero_and_not_pressure() {
        assert!(decide(&guard(GuardAction::Drain), &[worker("blind", None)]).is_empty());
    }

    #[test]
    fn a_worker_is_acted_on_once() {
        let acted = Worker {
            pod: "p",
            acted: true,
            fraction: Some(0.99),
        };
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
}
