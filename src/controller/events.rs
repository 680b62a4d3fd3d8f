//! Events users care about: failed, resumed, drained and OOM-killed batches, retries users
//! asked for, the run's end, and reconciles that fail.
//! Successful batches are not announced one by one.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType};

use super::Error;
use crate::api::{RecordRange, bytes_quantity};
use crate::plan::{Notice, RunState, Settled};

/// The reason of the Warning Event a failed reconcile publishes on its run.
pub const RECONCILE_FAILED: &str = "ReconcileFailed";

/// A failed reconcile, told on its run. The step is the Event's action: the recorder folds
/// repeats of one step into one Event (its count grows) and gives each failing step its own.
pub fn failure_event(error: &Error) -> Event {
    Event {
        type_: EventType::Warning,
        reason: RECONCILE_FAILED.into(),
        note: Some(error.to_string().chars().take(1000).collect()),
        action: error.event_action(),
        secondary: None,
    }
}

/// The Event for a notice. A batch's Event names the batch's Job as its related object: the
/// recorder folds Events by reason, action and objects (not by note), so without it two
/// batches continued in one reconcile would show as one Event with one batch's note.
pub fn event_for(
    notice: &Notice,
    job_of: impl Fn(RecordRange, u32) -> ObjectReference,
) -> Option<Event> {
    let event = batch_or_run_event(notice)?;
    Some(match notice {
        Notice::Settled { range, attempt, .. } => Event {
            secondary: Some(job_of(*range, *attempt)),
            ..event
        },
        _ => event,
    })
}

fn batch_or_run_event(notice: &Notice) -> Option<Event> {
    let event = |type_, reason: &str, note: String, action: &str| Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    match notice {
        Notice::Settled {
            range,
            attempt,
            settled,
        } => match settled {
            Settled::Succeeded => None,
            Settled::Resumed { remainder } => Some(event(
                EventType::Normal,
                "BatchResumed",
                format!(
                    "records {range} attempt {attempt} stopped early; records {remainder} continue in a new Job"
                ),
                "Resume",
            )),
            Settled::Retrying {
                reason,
                message,
                delay_seconds,
            } => Some(event(
                EventType::Warning,
                "BatchFailed",
                format!(
                    "records {range} attempt {attempt} failed ({reason}): {message}; retrying in {delay_seconds}s"
                ),
                "Retry",
            )),
            Settled::SplitAfterOom { halves } => Some(event(
                EventType::Warning,
                "OOMKilled",
                format!(
                    "records {range} attempt {attempt} was OOM-killed; retrying as {} and {}",
                    halves[0], halves[1]
                ),
                "Split",
            )),
            Settled::MoreMemory {
                cause,
                remainder,
                from,
                to,
            } => Some(event(
                EventType::Warning,
                "MoreMemory",
                format!(
                    "records {range} attempt {attempt} ran out of memory at {} ({cause}); records {remainder} run again with a {} limit",
                    bytes_quantity(*from),
                    bytes_quantity(*to)
                ),
                "Grow",
            )),
            Settled::Stopped {
                action,
                remainder,
                pieces,
            } => Some(event(
                EventType::Normal,
                "BatchContinued",
                format!(
                    "records {range} attempt {attempt} was stopped by the memory guard ({action:?}); records {remainder} continue as {}",
                    joined(pieces)
                ),
                "Continue",
            )),
            Settled::DrainedInProcess {
                seen,
                remainder,
                pieces,
            } => Some(event(
                EventType::Warning,
                "Drained",
                format!(
                    "records {range} attempt {attempt} was stopped by the worker's in-process guard at {}% of its {} MiB limit (working set {} MiB); records {remainder} continue as {}",
                    seen.percent(),
                    seen.limit_bytes >> 20,
                    seen.working_set_bytes >> 20,
                    joined(pieces)
                ),
                "Drain",
            )),
            Settled::FailedForGood { reason, message } => Some(event(
                EventType::Warning,
                "BatchFailed",
                format!("records {range} failed for good ({reason}): {message}"),
                "GiveUp",
            )),
        },
        Notice::Finished(RunState::Succeeded { message }) => Some(event(
            EventType::Normal,
            "RunSucceeded",
            message.clone(),
            "Finish",
        )),
        Notice::Finished(RunState::Failed { message, .. }) => Some(event(
            EventType::Warning,
            "RunFailed",
            message.clone(),
            "Finish",
        )),
        Notice::Finished(_) => None,
        Notice::Stalled { reason, message } => {
            Some(event(EventType::Warning, reason, message.clone(), "Wait"))
        }
        Notice::Retried { batches } => Some(event(
            EventType::Normal,
            "RetryRequested",
            format!("the failed records are queued again as {batches} batches"),
            "Retry",
        )),
    }
}

fn joined(pieces: &[crate::api::RecordRange]) -> String {
    let pieces: Vec<String> = pieces.iter().map(|p| p.to_string()).collect();
    pieces.join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::GuardAction;

    fn continued(start: u64) -> Notice {
        let range = RecordRange::new(start, start + 200);
        let remainder = RecordRange::new(start + 50, start + 200);
        Notice::Settled {
            range,
            attempt: 1,
            settled: Settled::Stopped {
                action: GuardAction::Drain,
                remainder,
                pieces: vec![remainder],
            },
        }
    }

    fn job_of(range: RecordRange, attempt: u32) -> ObjectReference {
        ObjectReference {
            kind: Some("Job".into()),
            name: Some(format!("etl-{}-a{attempt}", range.start)),
            ..Default::default()
        }
    }

    #[test]
    fn each_batch_event_names_its_own_job_so_the_recorder_keeps_them_apart() {
        let first = event_for(&continued(0), job_of).unwrap();
        let second = event_for(&continued(200), job_of).unwrap();
        assert_eq!(
            (first.reason.as_str(), first.action.as_str()),
            (second.reason.as_str(), second.action.as_str())
        );
        assert_eq!(first.secondary.unwrap().name.as_deref(), Some("etl-0-a1"));
        assert_eq!(
            second.secondary.unwrap().name.as_deref(),
            Some("etl-200-a1")
        );
    }

    #[test]
    fn run_events_name_no_job() {
        let finished = Notice::Finished(RunState::Succeeded {
            message: "done".into(),
        });
        assert_eq!(event_for(&finished, job_of).unwrap().secondary, None);
    }
}
