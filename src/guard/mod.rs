//! The memory guard: worker memory through Prometheus, one query per run per poll, and the
//! drain / restart / observe decisions. `promql` and `decide` are pure; `prometheus` and
//! `poller` do the I/O; `view` is what the guard tells the planner.

pub mod decide;
pub mod poller;
pub mod prometheus;
pub mod promql;
pub mod view;

/// Pod annotation recording the guard's action, so it is taken once and the planner knows a
/// stopped worker was not a failure.
pub const ACTION_ANNOTATION: &str = "batchguard.dev/guard-action";
/// Pod annotation with the percent of the limit measured when the guard acted.
pub const PERCENT_ANNOTATION: &str = "batchguard.dev/guard-percent";
