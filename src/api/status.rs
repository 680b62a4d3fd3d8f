//! `BatchRun.status`: progress, the exactly-once ledger (completed ranges + aggregate, written
//! together) and conditions that `kubectl wait`, Argo CD and Flux understand.
//!
//! Every list here is bounded so a 100,000-batch run keeps a small object. Optional fields are
//! serialized as `null` rather than skipped so that a JSON merge patch of the whole status
//! clears them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::BatchReason;

/// Most recent failures kept in status.
pub const MAX_FAILURES_SHOWN: usize = 10;
/// Output locations listed in status (the rest are only counted).
pub const MAX_OUTPUTS_SHOWN: usize = 10;
/// Distinct keys of `aggregate.sums`.
pub const MAX_SUM_KEYS: usize = 64;

/// The observed state of a BatchRun.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchRunStatus {
    /// The spec generation this status reflects.
    #[serde(default)]
    pub observed_generation: Option<i64>,
    /// Pending, Running, Succeeded, Failed or Suspended.
    #[serde(default)]
    pub phase: Option<Phase>,
    /// Ready, Reconciling, Stalled, Complete, Failed (metav1.Condition, kstatus rules).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Records done out of all records, e.g. `40000/100000`.
    #[serde(default)]
    pub progress: Option<String>,
    /// Batch counters.
    #[serde(default)]
    pub batches: BatchCounts,
    /// Compact set of record ranges whose results are in the aggregate, e.g. `0-39999,50000-54999`.
    #[serde(default)]
    pub completed: String,
    /// Compact set of record ranges that failed for good.
    #[serde(default)]
    pub failed: String,
    /// Ranges queued again after a failure or a guard action, each with its next attempt.
    #[serde(default)]
    pub pending: Vec<PendingBatch>,
    /// The merged outputs of all completed batches.
    #[serde(default)]
    pub aggregate: Aggregate,
    /// Memory guard counters.
    #[serde(default)]
    pub guard: GuardStatus,
    /// The most recent failed attempts (last few only).
    #[serde(default)]
    pub failures: Vec<FailureRecord>,
    /// When the first batch was launched.
    #[serde(default)]
    pub start_time: Option<Time>,
    /// When the run reached Succeeded or Failed.
    #[serde(default)]
    pub completion_time: Option<Time>,
    /// The last retry request acted on: the value of the run's `batchguard.dev/retry-failed`
    /// annotation when its failed ranges were queued again.
    #[serde(default)]
    pub retried_failed: Option<String>,
}

impl BatchRunStatus {
    /// Records done and all records, read back from `progress` (`done/total`).
    pub fn progress_counts(&self) -> Option<(u64, u64)> {
        let (done, total) = self.progress.as_deref()?.split_once('/')?;
        Some((done.parse().unwrap_or(0), total.parse().unwrap_or(0)))
    }
}

/// The lifecycle phase of a run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Nothing launched yet.
    Pending,
    /// Batches are running or queued.
    Running,
    /// Every record completed.
    Succeeded,
    /// Some records failed for good, or the run could not start.
    Failed,
    /// `spec.suspend` is set.
    Suspended,
}

/// A condition's status (metav1.Condition spells it `True`, `False` or `Unknown`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }

    /// Whether `condition` has this status.
    pub fn of(self, condition: &Condition) -> bool {
        condition.status == self.as_str()
    }
}

/// How many batches are in which state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct BatchCounts {
    /// Batch Jobs alive now.
    #[serde(default)]
    pub running: u64,
    /// Attempts whose results are counted.
    #[serde(default)]
    pub succeeded: u64,
    /// Attempts that failed (retried or not).
    #[serde(default)]
    pub failed: u64,
    /// Attempts stopped by the memory guard.
    #[serde(default)]
    pub drained: u64,
    /// Ranges waiting for a retry or a continuation.
    #[serde(default)]
    pub retrying: u64,
}

/// A range queued again, with the attempt it will run as.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingBatch {
    /// First record (inclusive).
    pub start: u64,
    /// One past the last record.
    pub end: u64,
    /// The attempt number the next Job gets.
    pub attempt: u32,
    /// Failures of this range so far (guard actions are not counted).
    pub failures: u32,
    /// Not launched before this time (backoff).
    #[serde(default)]
    pub not_before: Option<Time>,
    /// Why it was queued again.
    #[serde(default)]
    #[schemars(with = "String")]
    pub reason: BatchReason,
    /// The memory limit its next Job gets when it is more than `spec.resources.memory.limit`
    /// (retried with more memory after an OOM kill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<String>,
}

/// The merged results of the workers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Aggregate {
    /// Records the workers reported as processed.
    #[serde(default)]
    pub records: u64,
    /// Per-key sums of the workers' `sums`.
    #[serde(default)]
    pub sums: BTreeMap<String, f64>,
    /// Output locations the workers reported.
    #[serde(default)]
    pub outputs: Outputs,
}

/// Output locations: a count and the first few.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Outputs {
    /// How many outputs were reported in all.
    #[serde(default)]
    pub count: u64,
    /// The first outputs reported (bounded).
    #[serde(default)]
    pub first: Vec<String>,
}

/// What the memory guard did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuardStatus {
    /// Workers drained above the threshold.
    #[serde(default)]
    pub drains: u64,
    /// Workers restarted above the threshold.
    #[serde(default)]
    pub restarts: u64,
    /// Workers the kernel OOM-killed anyway.
    #[serde(default)]
    pub oom_kills: u64,
    /// Times a worker's memory was grown in place instead of draining it.
    #[serde(default)]
    pub resizes: u64,
    /// Highest memory use seen, in percent of the limit.
    #[serde(default)]
    pub peak_percent: u32,
    /// Learned from finished batches: peak worker memory per record, beyond the baseline.
    #[serde(default)]
    pub bytes_per_record: u64,
    /// Learned from finished batches: peak worker memory with no record at all.
    #[serde(default)]
    pub baseline_bytes: u64,
    /// The peaks the two are fitted over: the newest finished batch of each size (at most 8).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_samples: Vec<MemorySample>,
    /// Size of the batches launched now (at most `spec.input.batchSize`).
    #[serde(default)]
    pub batch_size: u64,
}

/// A finished batch's peak memory, as the guard saw it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemorySample {
    pub records: u64,
    pub peak_bytes: u64,
}

/// One failed attempt.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct FailureRecord {
    /// The records of the attempt, e.g. `25000-29999`.
    pub range: String,
    /// The attempt number.
    pub attempt: u32,
    /// A machine-readable reason, e.g. `OOMKilled`, `Error`, `BadOutput`.
    #[schemars(with = "String")]
    pub reason: BatchReason,
    /// What went wrong, for a human.
    pub message: String,
    /// The memory limit the attempt ran with.
    #[serde(
        default,
        rename = "memoryLimit",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory_limit: Option<String>,
}
