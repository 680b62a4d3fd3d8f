//! Reading how an attempt ended: its worker's exit and report, the guard's mark on its pod,
//! or its Job's failure.

use super::ObservedAttempt;
use crate::api::{BatchReason, GuardAction};
use crate::worker::{BadOutput, WorkerResult};

/// How an attempt ended, as far as the ledger cares.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The worker reported a result; a `resumeFrom` before the end leaves a remainder.
    Finished(WorkerResult),
    /// The attempt failed; `partial` holds what a checkpointing worker finished first.
    Failed {
        reason: BatchReason,
        message: String,
        partial: Option<WorkerResult>,
    },
    /// The memory guard stopped the worker; `partial` is its checkpoint, if it wrote one. A
    /// `partial` that says it stopped for memory is the worker's in-process (SDK) guard.
    Stopped {
        action: GuardAction,
        partial: Option<WorkerResult>,
    },
}

/// Reads the outcome of an attempt whose worker ended.
pub fn outcome_of(attempt: &ObservedAttempt) -> Option<Outcome> {
    let range = attempt.range;
    if let Some(pod) = attempt.pods.iter().find(|p| p.exit.is_some()) {
        let exit = pod.exit.as_ref()?;
        let parsed = WorkerResult::parse(&exit.message, range);
        if let Some(action @ (GuardAction::Drain | GuardAction::Restart)) = pod.guard_action {
            // The operator acted on this pod and counted it: one drain, even when the worker's
            // own guard had seen the pressure first.
            return Some(Outcome::Stopped {
                action,
                partial: parsed.ok().map(|mut result| {
                    (result.stopped_for, result.memory) = (None, None);
                    result
                }),
            });
        }
        return Some(if exit.exit_code == 0 {
            match parsed {
                Ok(result) if result.memory_stop().is_some() => Outcome::Stopped {
                    action: GuardAction::Drain,
                    partial: Some(result),
                },
                Ok(result) => Outcome::Finished(result),
                Err(bad) => bad_output(bad),
            }
        } else {
            let partial = parsed.ok().filter(|r| r.resume_from.is_some());
            let detail = if partial.is_some() || exit.message.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", exit.message.trim())
            };
            Outcome::Failed {
                reason: non_empty(&exit.reason, "Error").into(),
                message: format!("worker exited with code {}{detail}", exit.exit_code),
                partial,
            }
        });
    }
    let finish = attempt
        .job
        .as_ref()?
        .finished
        .as_ref()
        .filter(|f| f.failed)?;
    Some(Outcome::Failed {
        reason: non_empty(&finish.reason, "JobFailed").into(),
        message: format!(
            "the Job failed before its worker reported a result: {}",
            finish.message
        ),
        partial: None,
    })
}

fn bad_output(bad: BadOutput) -> Outcome {
    Outcome::Failed {
        reason: BatchReason::BadOutput,
        message: bad.to_string(),
        partial: None,
    }
}

fn non_empty(text: &str, fallback: &str) -> String {
    if text.is_empty() {
        fallback.to_string()
    } else {
        text.to_string()
    }
}
