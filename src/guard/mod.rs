//! The memory guard: worker memory through Prometheus, one query per run per poll, and the
//! drain / restart / observe decisions. `promql` and `decide` are pure; `prometheus` and
//! `poller` do the I/O; `view` is what the guard tells the planner.

pub mod decide;
pub mod poller;
pub mod prometheus;
pub mod promql;
pub mod resize;
pub mod schedule;
pub mod view;

/// Pod annotation recording the guard's action, so it is taken once and the planner knows a
/// stopped worker was not a failure.
pub const ACTION_ANNOTATION: &str = "batchguard.dev/guard-action";
/// Pod annotation with the percent of the limit measured when the guard acted.
pub const PERCENT_ANNOTATION: &str = "batchguard.dev/guard-percent";

/// The guard's action recorded on a pod, read back from its annotation.
pub fn marked_action(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Option<crate::api::GuardAction> {
    use crate::api::GuardAction;
    match annotations.get(ACTION_ANNOTATION)?.as_str() {
        "Drain" => Some(GuardAction::Drain),
        "Restart" => Some(GuardAction::Restart),
        "Observe" => Some(GuardAction::Observe),
        _ => None,
    }
}

/// The percent recorded with the action (0 when unreadable).
pub fn marked_percent(annotations: &std::collections::BTreeMap<String, String>) -> u32 {
    annotations
        .get(PERCENT_ANNOTATION)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}
