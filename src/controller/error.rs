//! Why a reconcile failed: one variant per step, each naming what it worked on, so a log line,
//! a metric label and the run's Warning Event all say which step failed and why.

use kube::runtime::finalizer;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the object has no namespace")]
    NoNamespace,
    #[error("the object has no name")]
    NoName,
    #[error("could not add the cleanup finalizer: {0}")]
    AddFinalizer(#[source] kube::Error),
    #[error("could not remove the cleanup finalizer: {0}")]
    RemoveFinalizer(#[source] kube::Error),
    #[error("the cleanup finalizer's name is not a valid finalizer")]
    InvalidFinalizer,
    #[error("could not read BatchRun {run}: {source}")]
    ReadRun { run: String, source: kube::Error },
    #[error("could not list the FailedCreate Events of Job {job}: {source}")]
    ListJobEvents { job: String, source: kube::Error },
    #[error("could not write the status of BatchRun {run}: {source}")]
    WriteStatus { run: String, source: kube::Error },
    #[error("could not release the result finalizer of pod {pod}: {source}")]
    ReleaseFinalizer { pod: String, source: kube::Error },
    #[error("could not create Job {job}: {source}")]
    LaunchJob { job: String, source: kube::Error },
    #[error("could not delete settled Job {job}: {source}")]
    RemoveJob { job: String, source: kube::Error },
    #[error("could not stop pod {pod}: {source}")]
    StopPod { pod: String, source: kube::Error },
    #[error("could not delete the Jobs of deleted BatchRun {run}: {source}")]
    DeleteJobs { run: String, source: kube::Error },
    #[error("could not list the pods of deleted BatchRun {run}: {source}")]
    ListPods { run: String, source: kube::Error },
    #[error("could not write the status of BatchQueue {queue}: {source}")]
    WriteQueueStatus { queue: String, source: kube::Error },
}

impl Error {
    /// Every value of `metric_label`, so the error counter shows each at 0 from the start.
    pub const METRIC_LABELS: [&'static str; 15] = [
        "no_namespace",
        "no_name",
        "add_finalizer",
        "remove_finalizer",
        "invalid_finalizer",
        "read_run",
        "list_job_events",
        "write_status",
        "release_finalizer",
        "launch_job",
        "remove_job",
        "stop_pod",
        "delete_jobs",
        "list_pods",
        "write_queue_status",
    ];

    /// The failed step, as the `error` label of `batchguard_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::NoNamespace => "no_namespace",
            Error::NoName => "no_name",
            Error::AddFinalizer(_) => "add_finalizer",
            Error::RemoveFinalizer(_) => "remove_finalizer",
            Error::InvalidFinalizer => "invalid_finalizer",
            Error::ReadRun { .. } => "read_run",
            Error::ListJobEvents { .. } => "list_job_events",
            Error::WriteStatus { .. } => "write_status",
            Error::ReleaseFinalizer { .. } => "release_finalizer",
            Error::LaunchJob { .. } => "launch_job",
            Error::RemoveJob { .. } => "remove_job",
            Error::StopPod { .. } => "stop_pod",
            Error::DeleteJobs { .. } => "delete_jobs",
            Error::ListPods { .. } => "list_pods",
            Error::WriteQueueStatus { .. } => "write_queue_status",
        }
    }

    /// The failed step in the form of an Event's action (`write_status` → `WriteStatus`). The
    /// events recorder folds repeats of one action into one Event, so each failing step gets
    /// one Event whose count grows, not one per retry.
    pub fn event_action(&self) -> String {
        self.metric_label()
            .split('_')
            .map(|word| {
                let mut chars = word.chars();
                chars
                    .next()
                    .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// The finalizer helper's errors, flattened: the step's own error when a step failed.
impl From<finalizer::Error<Error>> for Error {
    fn from(error: finalizer::Error<Error>) -> Self {
        match error {
            finalizer::Error::ApplyFailed(error) | finalizer::Error::CleanupFailed(error) => error,
            finalizer::Error::AddFinalizer(source) => Error::AddFinalizer(source),
            finalizer::Error::RemoveFinalizer(source) => Error::RemoveFinalizer(source),
            finalizer::Error::UnnamedObject => Error::NoName,
            finalizer::Error::InvalidFinalizer => Error::InvalidFinalizer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict() -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("modified", "Conflict").with_code(409),
        ))
    }

    fn every_error() -> Vec<Error> {
        let name = || "x".to_string();
        vec![
            Error::NoNamespace,
            Error::NoName,
            Error::AddFinalizer(conflict()),
            Error::RemoveFinalizer(conflict()),
            Error::InvalidFinalizer,
            Error::ReadRun {
                run: name(),
                source: conflict(),
            },
            Error::ListJobEvents {
                job: name(),
                source: conflict(),
            },
            Error::WriteStatus {
                run: name(),
                source: conflict(),
            },
            Error::ReleaseFinalizer {
                pod: name(),
                source: conflict(),
            },
            Error::LaunchJob {
                job: name(),
                source: conflict(),
            },
            Error::RemoveJob {
                job: name(),
                source: conflict(),
            },
            Error::StopPod {
                pod: name(),
                source: conflict(),
            },
            Error::DeleteJobs {
                run: name(),
                source: conflict(),
            },
            Error::ListPods {
                run: name(),
                source: conflict(),
            },
            Error::WriteQueueStatus {
                queue: name(),
                source: conflict(),
            },
        ]
    }

    #[test]
    fn each_step_has_its_own_label_and_all_are_listed() {
        let labels: Vec<&str> = every_error().iter().map(Error::metric_label).collect();
        assert_eq!(labels, Error::METRIC_LABELS);
    }

    #[test]
    fn a_step_becomes_an_event_action() {
        let error = Error::WriteStatus {
            run: "payroll".into(),
            source: conflict(),
        };
        assert_eq!(error.event_action(), "WriteStatus");
        assert_eq!(Error::NoNamespace.event_action(), "NoNamespace");
    }

    #[test]
    fn a_failed_step_keeps_its_voice_through_the_finalizer_helper() {
        let error = Error::from(finalizer::Error::ApplyFailed(Error::LaunchJob {
            job: "payroll-10-20-a1".into(),
            source: conflict(),
        }));
        assert_eq!(error.metric_label(), "launch_job");
        assert!(
            error
                .to_string()
                .starts_with("could not create Job payroll-10-20-a1: "),
            "{error}"
        );
    }
}
