//! The memory guard: worker memory through Prometheus (`crate::prometheus`), one query per poll
//! for every guarded run, and the drain / restart / resize / observe decisions. `decide`,
//! `measure` and `resize` are pure; `poller` does the I/O; `view` is what the guard tells the
//! planner.

pub mod decide;
pub mod measure;
pub mod poller;
pub mod resize;
pub mod view;
