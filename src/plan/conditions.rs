//! Phase and conditions, by Kubernetes API conventions and the kstatus rules that Argo CD,
//! Flux and `kubectl wait` read: `Reconciling=True` while work is under way, `Stalled=True` when
//! the run cannot make progress, `Ready=True` only when it succeeded; `Complete` and `Failed`
//! are added when the run ends, like a Job's. `MemoryPressure` and `Queued` say what the guard
//! and the run's queue see.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::{Observed, RunMemory, Seat};
use crate::api::{BatchRunStatus, ConditionStatus, Phase};

/// A condition whose transition time is kept from `previous` while its status stays the same.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && status.of(c))
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status: status.as_str().to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// Where a run stands, with the words users will read.
#[derive(Clone, Debug, PartialEq)]
pub enum RunState {
    Pending {
        message: String,
    },
    Running {
        message: String,
    },
    Suspended {
        message: String,
    },
    /// Not finished, but held back by something the user must look at (`Stalled=True`).
    Stalled {
        reason: String,
        message: String,
        started: bool,
    },
    Succeeded {
        message: String,
    },
    Failed {
        reason: String,
        message: String,
    },
}

impl RunState {
    pub fn phase(&self) -> Phase {
        match self {
            RunState::Pending { .. } => Phase::Pending,
            RunState::Running { .. } => Phase::Running,
            RunState::Suspended { .. } => Phase::Suspended,
            RunState::Stalled { started: true, .. } => Phase::Running,
            RunState::Stalled { started: false, .. } => Phase::Pending,
            RunState::Succeeded { .. } => Phase::Succeeded,
            RunState::Failed { .. } => Phase::Failed,
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self, RunState::Succeeded { .. } | RunState::Failed { .. })
    }

    /// The conditions for this state; transition times are kept from `previous` when the
    /// status of a condition did not change.
    pub fn conditions(
        &self,
        generation: i64,
        previous: &[Condition],
        now: Timestamp,
    ) -> Vec<Condition> {
        let (ready, reconciling, stalled, ended) = match self {
            RunState::Pending { message } => (
                (ConditionStatus::False, "Pending", message),
                (ConditionStatus::True, "Pending", message),
                (ConditionStatus::False, "Progressing", message),
                None,
            ),
            RunState::Running { message } => (
                (ConditionStatus::False, "Running", message),
                (ConditionStatus::True, "Running", message),
                (ConditionStatus::False, "Progressing", message),
                None,
            ),
            RunState::Suspended { message } => (
                (ConditionStatus::False, "Suspended", message),
                (ConditionStatus::False, "Suspended", message),
                (ConditionStatus::False, "Suspended", message),
                None,
            ),
            RunState::Stalled {
                reason, message, ..
            } => (
                (ConditionStatus::False, reason.as_str(), message),
                (ConditionStatus::False, reason.as_str(), message),
                (ConditionStatus::True, reason.as_str(), message),
                None,
            ),
            RunState::Succeeded { message } => (
                (ConditionStatus::True, "Succeeded", message),
                (ConditionStatus::False, "Succeeded", message),
                (ConditionStatus::False, "Succeeded", message),
                Some(("Complete", "Succeeded", message)),
            ),
            RunState::Failed { reason, message } => (
                (ConditionStatus::False, reason.as_str(), message),
                (ConditionStatus::False, reason.as_str(), message),
                (ConditionStatus::True, reason.as_str(), message),
                Some(("Failed", reason.as_str(), message)),
            ),
        };
        let make = |type_: &str, (status, reason, message): (ConditionStatus, &str, &String)| {
            condition(
                previous,
                type_,
                status,
                reason,
                message,
                Some(generation),
                now,
            )
        };
        let mut conditions = vec![
            make("Ready", ready),
            make("Reconciling", reconciling),
            make("Stalled", stalled),
        ];
        if let Some((type_, reason, message)) = ended {
            conditions.push(make(type_, (ConditionStatus::True, reason, message)));
        }
        conditions
    }
}

/// `MemoryPressure`: True while a worker is at or above the threshold, Unknown while the guard
/// is blind or off, False otherwise; the message carries the measured percent.
pub(super) fn memory_condition(
    observed: &Observed,
    state: &RunState,
    status: &BatchRunStatus,
    previous: &[Condition],
) -> Condition {
    let spec = observed.spec;
    let threshold = spec.memory_guard.threshold;
    let limit = &spec.resources.memory.limit;
    let peak = format!(
        "peak {}% of the {limit} limit (threshold {threshold}%)",
        status.guard.peak_percent
    );
    let (value, reason, message) = match observed.memory {
        _ if state.is_finished() => (ConditionStatus::False, "RunFinished".to_string(), peak),
        None => (
            ConditionStatus::Unknown,
            "GuardOff".to_string(),
            "the operator runs without --prometheus-url: worker memory is not watched".to_string(),
        ),
        Some(RunMemory {
            blind: Some(blind), ..
        }) => (
            ConditionStatus::Unknown,
            "GuardBlind".to_string(),
            format!("memory guard blind since {}: {}", blind.since, blind.reason),
        ),
        Some(memory) => {
            let hot = memory
                .pods
                .iter()
                .filter(|(_, p)| spec.memory_guard.at_threshold(p.fraction))
                .max_by(|a, b| a.1.fraction.total_cmp(&b.1.fraction));
            match hot {
                Some((pod, p)) => (
                    ConditionStatus::True,
                    "AboveThreshold".to_string(),
                    format!(
                        "pod {pod} at {:.0}% of its {} limit (threshold {threshold}%)",
                        p.fraction * 100.0,
                        if p.limit.is_empty() { limit } else { &p.limit },
                    ),
                ),
                None => {
                    let last = memory
                        .last_action
                        .as_ref()
                        .map(|a| format!("; last action: {a}"))
                        .unwrap_or_default();
                    (
                        ConditionStatus::False,
                        "BelowThreshold".to_string(),
                        format!("{peak}{last}"),
                    )
                }
            }
        }
    };
    condition(
        previous,
        "MemoryPressure",
        value,
        &reason,
        &message,
        Some(observed.generation),
        observed.now,
    )
}

/// `Queued`: True while batches of the run wait for room in its BatchQueue, with what they
/// wait for; False once everything the run can start is admitted.
pub(super) fn queued_condition(
    observed: &Observed,
    seat: &Seat,
    state: &RunState,
    previous: &[Condition],
) -> Condition {
    let (value, reason, message) = match &seat.waiting {
        _ if state.is_finished() => (
            ConditionStatus::False,
            "RunFinished".to_string(),
            format!("the run no longer uses queue {}", seat.queue),
        ),
        Some((reason, message)) => (ConditionStatus::True, reason.clone(), message.clone()),
        None => (
            ConditionStatus::False,
            "Admitted".to_string(),
            format!(
                "queue {} admits every batch the run can start now",
                seat.queue
            ),
        ),
    };
    condition(
        previous,
        "Queued",
        value,
        &reason,
        &message,
        Some(observed.generation),
        observed.now,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn find<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
        conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn running_run_is_reconciling_and_not_ready() {
        let c = RunState::Running {
            message: "m".into(),
        }
        .conditions(2, &[], now());
        assert_eq!(find(&c, "Reconciling").status, "True");
        assert_eq!(find(&c, "Ready").status, "False");
        assert_eq!(find(&c, "Stalled").status, "False");
        assert!(c.iter().all(|c| c.observed_generation == Some(2)));
        assert!(
            !c.iter()
                .any(|c| c.type_ == "Complete" || c.type_ == "Failed")
        );
    }

    #[test]
    fn succeeded_run_is_ready_and_complete() {
        let c = RunState::Succeeded {
            message: "done".into(),
        }
        .conditions(1, &[], now());
        assert_eq!(find(&c, "Ready").status, "True");
        assert_eq!(find(&c, "Complete").status, "True");
        assert_eq!(find(&c, "Reconciling").status, "False");
    }

    #[test]
    fn failed_run_is_stalled_with_its_reason() {
        let state = RunState::Failed {
            reason: "BatchesFailed".into(),
            message: "0-9 failed".into(),
        };
        let c = state.conditions(1, &[], now());
        assert_eq!(find(&c, "Stalled").status, "True");
        assert_eq!(find(&c, "Failed").reason, "BatchesFailed");
        assert_eq!(find(&c, "Failed").message, "0-9 failed");
        assert_eq!(find(&c, "Ready").status, "False");
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let before = RunState::Running {
            message: "a".into(),
        }
        .conditions(1, &[], now());
        let later = now() + std::time::Duration::from_secs(60);
        let again = RunState::Running {
            message: "b".into(),
        }
        .conditions(1, &before, later);
        assert_eq!(find(&again, "Ready").last_transition_time, Time(now()));
        let done = RunState::Succeeded {
            message: "c".into(),
        }
        .conditions(1, &again, later);
        assert_eq!(find(&done, "Ready").last_transition_time, Time(later));
        assert_eq!(find(&done, "Stalled").last_transition_time, Time(now()));
    }
}
