//! The pure core: ranges, batch cutting, backoff, settling results and the planner
//! (observed state in, actions out). Nothing here talks to Kubernetes.

mod admission;
mod backoff;
mod conditions;
mod cutting;
mod ledger;
mod memory;
mod observed;
mod outcome;
mod planner;
#[cfg(test)]
mod planner_tests;
mod rerun;
mod retention;
mod settle;
mod sizing;
mod stall;

pub use admission::*;
pub use backoff::*;
pub use conditions::*;
pub use cutting::*;
pub use ledger::*;
pub use memory::*;
pub use observed::*;
pub use outcome::*;
pub use planner::*;
pub use rerun::*;
pub use retention::*;
pub use settle::*;
pub use sizing::*;
pub use stall::*;
