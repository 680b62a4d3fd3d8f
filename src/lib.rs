//! batchguard: runs big data jobs as many small, memory-guarded worker Jobs.
//!
//! `api` holds the BatchRun resource, `plan` the pure core that decides, `controller` the thin
//! shell that observes and applies, `guard` the memory poller beside it, `worker` the contract
//! with the worker processes. docs/architecture.md walks through the flow, the exactly-once
//! protocol and which module owns what.

pub mod admin;
pub mod api;
pub mod cli;
pub mod controller;
pub mod finalizers;
pub mod guard;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod prometheus;
pub mod queues;
pub mod telemetry;
pub mod worker;
