//! Environment variables a worker receives, and the ones the SDKs read besides.

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
/// The run's guard threshold, a percent of the memory limit (1-99). The SDKs' in-process guard
/// stops the worker at it, as a drain would; absent when the run's guard only observes.
pub const MEMORY_THRESHOLD_PERCENT: &str = "BATCHGUARD_MEMORY_THRESHOLD_PERCENT";
/// Items mode: the batch's items as a JSON array of strings.
pub const ITEMS: &str = "BATCHGUARD_ITEMS";
/// Where the worker writes its result.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// Read by the SDKs only (the operator never sets them):
/// `0`, `false` or `off` turns the in-process guard off.
pub const SDK_GUARD: &str = "BATCHGUARD_SDK_GUARD";
/// Where the in-process guard looks for the container's cgroup (default `/sys/fs/cgroup`).
pub const SDK_CGROUP_ROOT: &str = "BATCHGUARD_CGROUP_ROOT";
/// The in-process guard's poll interval in milliseconds (default 100, at least 10).
pub const SDK_GUARD_INTERVAL_MS: &str = "BATCHGUARD_GUARD_INTERVAL_MS";
/// Opt-in: also stop when memory stalls (cgroup v2 PSI, `full`) took at least this percent of
/// the last poll interval.
pub const SDK_PRESSURE_PERCENT: &str = "BATCHGUARD_GUARD_PRESSURE_PERCENT";
/// Overrides [`TERMINATION_LOG`] (local runs and tests).
pub const SDK_TERMINATION_LOG: &str = "BATCHGUARD_TERMINATION_LOG";
