//! Environment variables a worker receives.

/// Name of the BatchRun.
pub const RUN: &str = "BATCHGUARD_RUN";
/// First record offset of the batch (inclusive).
pub const RANGE_START: &str = "BATCHGUARD_RANGE_START";
/// Record offset one past the batch's last record.
pub const RANGE_END: &str = "BATCHGUARD_RANGE_END";
/// Attempt number of this Job, starting at 1.
pub const ATTEMPT: &str = "BATCHGUARD_ATTEMPT";
/// Memory limit of the worker container in bytes.
pub const MEMORY_LIMIT_BYTES: &str = "BATCHGUARD_MEMORY_LIMIT_BYTES";
/// Items mode: the batch's items as a JSON array of strings.
pub const ITEMS: &str = "BATCHGUARD_ITEMS";
/// Where the worker writes its result.
pub const TERMINATION_LOG: &str = "/dev/termination-log";
