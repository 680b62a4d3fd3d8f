//! `BatchRun.spec`: what to process, how to cut it, and how to guard the workers.
//!
//! Validation that the apiserver can do lives here as schema bounds and CEL rules, so a bad
//! manifest fails at `kubectl apply` with a message naming the field.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::BatchRunStatus;

/// A data job cut into batches, each run as its own memory-guarded Kubernetes Job.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "batchguard.dev",
    version = "v1alpha1",
    kind = "BatchRun",
    plural = "batchruns",
    shortname = "br",
    category = "batchguard",
    namespaced,
    status = "BatchRunStatus",
    derive = "PartialEq",
    printcolumn(json_path = ".status.phase", name = "Phase", type_ = "string"),
    printcolumn(json_path = ".status.progress", name = "Progress", type_ = "string"),
    printcolumn(json_path = ".status.batches.running", name = "Running", type_ = "integer"),
    printcolumn(json_path = ".status.guard.drains", name = "Drains", type_ = "integer"),
    printcolumn(json_path = ".spec.queue", name = "Queue", type_ = "string", priority = 1),
    printcolumn(json_path = ".metadata.creationTimestamp", name = "Age", type_ = "date"),
    validation = Rule::new("size(self.metadata.name) <= 63").message("metadata.name must be at most 63 characters: it labels the run's Jobs and pods")
)]
#[x_kube(validation = Rule::new("has(self.template.spec) && size(self.template.spec.containers) >= 1")
    .message("spec.template.spec.containers must hold at least one container")
    .field_path(".template"))]
#[x_kube(validation = Rule::new("!has(self.queue) || !has(self.kueue)")
    .message("spec.queue and spec.kueue exclude each other: one source of quota per run"))]
#[serde(rename_all = "camelCase")]
pub struct BatchRunSpec {
    /// The records to process and how many go to one worker.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.input is immutable: create a new BatchRun to process other records"))]
    pub input: InputSpec,

    /// At most this many batch Jobs are alive at once.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 10000))]
    pub parallelism: u32,

    /// The worker pod. The container named `worker` (or else the first one) processes the batch.
    #[schemars(schema_with = "super::schema::pod_template_schema")]
    pub template: PodTemplateSpec,

    /// Memory request and limit of the worker container; they override the template's.
    pub resources: WorkerResources,

    /// What to do when a worker's memory nears its limit.
    #[serde(default)]
    pub memory_guard: MemoryGuard,

    /// How failed batches are retried.
    #[serde(default)]
    pub retry: RetryPolicy,

    /// How long finished Jobs are kept before they are removed.
    #[serde(default)]
    pub retention: Retention,

    /// When true no new batch starts; batches already running finish and are counted.
    #[serde(default)]
    pub suspend: bool,

    /// The BatchQueue (same namespace) whose memory budget and batch cap this run shares.
    /// Without one the run is bounded by its own parallelism alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub queue: Option<String>,

    /// Hand the batch Jobs to Kueue instead: they are created suspended with Kueue's
    /// queue-name label, and Kueue admits them against its quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kueue: Option<KueueHandOff>,

    /// Seconds a batch may wait for its worker to start (pod created, scheduled, image pulled,
    /// container created) before the run reports `Stalled=True` naming the pod and the reason.
    #[serde(default = "default_start_timeout")]
    #[schemars(range(min = 10, max = 86400))]
    pub start_timeout_seconds: u32,
}

/// Admission by Kueue.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KueueHandOff {
    /// The Kueue LocalQueue (in the run's namespace) the batch Jobs are submitted to.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub queue_name: String,
}

fn default_parallelism() -> u32 {
    1
}

fn default_start_timeout() -> u32 {
    120
}

/// The input: exactly one of a record range or a list of items, and the batch size.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.range) != has(self.items)").message("spec.input must set exactly one of range or items"))]
#[serde(rename_all = "camelCase")]
pub struct InputSpec {
    /// A half-open range of record offsets `[start, end)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<RecordRangeSpec>,

    /// A list of items (client ids, file keys); batches address them by index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100000))]
    pub items: Option<Vec<String>>,

    /// Records per batch (the guard may make later batches smaller, never larger).
    #[schemars(range(min = 1))]
    pub batch_size: u64,
}

/// A half-open range of record offsets.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.end > self.start").message("spec.input.range.end must be greater than spec.input.range.start"))]
pub struct RecordRangeSpec {
    /// First record offset (inclusive).
    #[schemars(range(min = 0))]
    pub start: i64,
    /// Record offset one past the last record (exclusive).
    #[schemars(range(min = 1))]
    pub end: i64,
}

/// Resources of the worker container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WorkerResources {
    /// Memory request and limit, both required.
    pub memory: MemoryResources,
}

/// Explicit memory request and limit (Kubernetes quantities such as `512Mi` or `2Gi`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!isQuantity(self.request) || !isQuantity(self.limit) || quantity(self.request).compareTo(quantity(self.limit)) <= 0")
    .message("spec.resources.memory.request must not be greater than spec.resources.memory.limit"))]
#[x_kube(validation = Rule::new("!has(self.max) || !isQuantity(self.max) || !isQuantity(self.limit) || quantity(self.max).compareTo(quantity(self.limit)) >= 0")
    .message("spec.resources.memory.max must not be less than spec.resources.memory.limit"))]
pub struct MemoryResources {
    /// Memory request of the worker container.
    #[x_kube(validation = Rule::new("isQuantity(self)").message("spec.resources.memory.request must be a quantity such as 512Mi or 2Gi"))]
    #[x_kube(validation = Rule::new("!isQuantity(self) || quantity(self).compareTo(quantity('0')) > 0").message("spec.resources.memory.request must be greater than 0: the kubelet reads 0 as no request at all"))]
    #[schemars(length(min = 1, max = 64))]
    pub request: String,
    /// Memory limit of the worker container: the guard measures against it.
    #[x_kube(validation = Rule::new("isQuantity(self)").message("spec.resources.memory.limit must be a quantity such as 512Mi or 2Gi"))]
    #[x_kube(validation = Rule::new("!isQuantity(self) || quantity(self).compareTo(quantity('0')) > 0").message("spec.resources.memory.limit must be greater than 0: the kubelet reads 0 as no limit at all"))]
    #[schemars(length(min = 1, max = 64))]
    pub limit: String,
    /// Ceiling for a batch retried with more memory after an OOM kill: the limit (and the
    /// request with it) doubles per retry up to this. Without it memory never grows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isQuantity(self)").message("spec.resources.memory.max must be a quantity such as 512Mi or 2Gi"))]
    #[schemars(length(min = 1, max = 64))]
    pub max: Option<String>,
}

/// The memory guard's settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemoryGuard {
    /// Percent of the memory limit at or above which the guard acts.
    #[serde(default = "default_threshold")]
    #[schemars(range(min = 1, max = 99))]
    pub threshold: u8,
    /// What the guard does to a worker above the threshold.
    #[serde(default)]
    pub action: GuardAction,
    /// Grace period given to a drained worker to finish its chunk and report `resumeFrom`.
    #[serde(default = "default_drain_grace")]
    #[schemars(range(min = 1, max = 86400))]
    pub drain_grace_period_seconds: i64,
    /// How the unfinished records of a drained worker are queued again.
    #[serde(default)]
    pub on_pressure: OnPressure,
    /// What follows an OOM kill. A batch of one record always gets more memory when
    /// `spec.resources.memory.max` leaves room.
    #[serde(default, rename = "onOOM")]
    pub on_oom: OnOom,
}

impl MemoryGuard {
    /// A worker at `fraction` of its limit is at or above the threshold. The one comparison
    /// the guard acts on and the MemoryPressure condition reports, so they never disagree at
    /// the edge (`0.29 * 100.0` is below 29 in floating point; `29 / 100` is not above 0.29).
    pub fn at_threshold(&self, fraction: f64) -> bool {
        fraction >= f64::from(self.threshold) / 100.0
    }
}

impl Default for MemoryGuard {
    fn default() -> Self {
        Self {
            threshold: default_threshold(),
            action: GuardAction::default(),
            drain_grace_period_seconds: default_drain_grace(),
            on_pressure: OnPressure::default(),
            on_oom: OnOom::default(),
        }
    }
}

fn default_threshold() -> u8 {
    85
}

fn default_drain_grace() -> i64 {
    60
}

/// The guard's action on a worker above the threshold.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GuardAction {
    /// Stop the worker gracefully (SIGTERM); its unfinished records continue in a new Job.
    #[default]
    Drain,
    /// Stop the worker with a short grace period; its unfinished records re-run.
    Restart,
    /// Only record an Event and the measured percent.
    Observe,
}

/// How a drained worker's unfinished records are queued again.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnPressure {
    /// As one batch.
    Resume,
    /// In two halves.
    #[default]
    Split,
}

/// What follows an OOM kill of a worker.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnOom {
    /// Retry the batch in two halves with the same memory (without using an attempt).
    #[default]
    Split,
    /// Retry the batch whole with twice the memory, up to `spec.resources.memory.max`;
    /// halves only once the ceiling is reached.
    Grow,
}

/// Retries of failed batches: new attempts with exponential backoff and full jitter.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Failed attempts allowed per batch; guard actions are not counted.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    /// The run stops launching and ends Failed once more batches than this have failed for good.
    #[serde(default = "default_max_failed_batches")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_failed_batches: u32,
    /// Delay before a retry: random in [0, min(maxSeconds, baseSeconds * 2^(failures-1))].
    #[serde(default)]
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            max_failed_batches: default_max_failed_batches(),
            backoff: Backoff::default(),
        }
    }
}

fn default_max_attempts() -> u32 {
    3
}

fn default_max_failed_batches() -> u32 {
    100
}

/// Exponential backoff bounds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.baseSeconds <= self.maxSeconds").message("spec.retry.backoff.baseSeconds must not be greater than maxSeconds"))]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    /// Backoff ceiling after the first failure.
    #[serde(default = "default_backoff_base")]
    #[schemars(range(min = 0, max = 86400))]
    pub base_seconds: u64,
    /// Upper bound of any backoff.
    #[serde(default = "default_backoff_max")]
    #[schemars(range(min = 0, max = 86400))]
    pub max_seconds: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base_seconds: default_backoff_base(),
            max_seconds: default_backoff_max(),
        }
    }
}

fn default_backoff_base() -> u64 {
    10
}

fn default_backoff_max() -> u64 {
    600
}

/// How long finished workers stay in the cluster after their result is counted.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Seconds a succeeded Job is kept (`ttlSecondsAfterFinished`; 0 removes it once it finishes).
    #[serde(default)]
    #[schemars(range(min = 0, max = 604800))]
    pub succeeded_seconds: i32,
    /// Seconds the pod of a failed attempt is kept, for `kubectl logs`, after its failure is counted.
    #[serde(default = "default_failed_retention")]
    #[schemars(range(min = 0, max = 604800))]
    pub failed_seconds: i32,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            succeeded_seconds: 0,
            failed_seconds: default_failed_retention(),
        }
    }
}

fn default_failed_retention() -> i32 {
    3600
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_reached_at_its_exact_fraction() {
        let guard = MemoryGuard {
            threshold: 29,
            ..Default::default()
        };
        // The float edge: 0.29 * 100.0 is 28.999…, below 29.
        let fraction = std::hint::black_box(0.29);
        assert!(fraction * 100.0 < 29.0);
        assert!(guard.at_threshold(fraction));
        assert!(guard.at_threshold(0.30));
        assert!(!guard.at_threshold(0.2899));
    }
}
