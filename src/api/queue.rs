//! `BatchQueue`: a memory budget and a cap on live batches shared by the BatchRuns that name it.
//!
//! Namespaced on purpose: runs name their queue within their own namespace, so a team that
//! may create runs may not spend another team's budget, and the operator's RBAC stays
//! per-namespace. Quota across namespaces is what Kueue does; runs can hand off to it
//! (`BatchRun.spec.kueue`) instead.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A budget for the batches of many runs at once.
// Printer columns split over lines by rustfmt look like repeated attributes to clippy.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "batchguard.dev",
    version = "v1alpha1",
    kind = "BatchQueue",
    plural = "batchqueues",
    shortname = "bq",
    category = "batchguard",
    namespaced,
    status = "BatchQueueStatus",
    derive = "PartialEq",
    printcolumn(json_path = ".spec.memory", name = "Budget", type_ = "string"),
    printcolumn(
        json_path = ".status.admittedMemory",
        name = "Admitted",
        type_ = "string"
    ),
    printcolumn(
        json_path = ".status.admittedBatches",
        name = "Batches",
        type_ = "integer"
    ),
    printcolumn(json_path = ".spec.maxBatches", name = "Max", type_ = "integer"),
    printcolumn(
        json_path = ".status.waitingBatches",
        name = "Waiting",
        type_ = "integer"
    ),
    printcolumn(
        json_path = ".metadata.creationTimestamp",
        name = "Age",
        type_ = "date"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BatchQueueSpec {
    /// The sum of worker memory limits that may be admitted at once (a quantity such as `6Gi`).
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))")
        .message("spec.memory must be a positive quantity such as 6Gi"))]
    #[schemars(length(min = 1, max = 64))]
    pub memory: String,

    /// At most this many batch Jobs of the queue's runs are alive at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_batches: Option<u32>,

    /// How free room is shared between the runs that wait.
    #[serde(default)]
    pub fairness: Fairness,
}

/// How a queue shares room between waiting runs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Fairness {
    /// The next free slot goes to the run holding the fewest batches (oldest run on ties):
    /// a run that arrives late starts at once, whatever another run has pending.
    #[default]
    RoundRobin,
    /// Runs are served in the order they were created: a run gets room only when every
    /// older run has all the batches it can use.
    Fifo,
}

/// What a queue holds and who waits for it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchQueueStatus {
    /// The spec generation this status reflects.
    #[serde(default)]
    pub observed_generation: Option<i64>,
    /// Memory limits of the workers that hold memory now, as a quantity (e.g. `1536Mi`).
    #[serde(default)]
    pub admitted_memory: Option<String>,
    /// The same in bytes.
    #[serde(default)]
    pub admitted_bytes: u64,
    /// Batch Jobs that hold (or are about to hold) a worker.
    #[serde(default)]
    pub admitted_batches: u64,
    /// Batches that runs would start now if the queue had room.
    #[serde(default)]
    pub waiting_batches: u64,
    /// Runs that wait, in the order they will be served.
    #[serde(default)]
    pub waiting_runs: Vec<WaitingRun>,
    /// Ready (the queue is valid) and Saturated (runs wait for room).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A run waiting for room in a queue.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaitingRun {
    pub name: String,
    /// 1 for the run served next.
    pub position: u32,
    /// Batches it would start now.
    pub waiting_batches: u64,
    /// Batches it holds.
    pub admitted_batches: u64,
}
