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
