//! Metrics of BatchQueues: what each has admitted, what waits, and its budget.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::set_clamped;

/// A queue's figures, as its status shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QueueUsage {
    pub admitted_bytes: u64,
    pub admitted_batches: u64,
    pub waiting_batches: u64,
    pub budget_bytes: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub namespace: String,
    pub queue: String,
}

pub struct QueueMetrics {
    pub admitted_bytes: Family<QueueLabels, Gauge>,
    pub admitted_batches: Family<QueueLabels, Gauge>,
    pub waiting_batches: Family<QueueLabels, Gauge>,
    pub budget_bytes: Family<QueueLabels, Gauge>,
}

impl QueueMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            admitted_bytes: Family::default(),
            admitted_batches: Family::default(),
            waiting_batches: Family::default(),
            budget_bytes: Family::default(),
        };
        registry.register(
            "queue_admitted_bytes",
            "Memory limits of the workers a BatchQueue has admitted",
            metrics.admitted_bytes.clone(),
        );
        registry.register(
            "queue_admitted_batches",
            "Batch Jobs a BatchQueue has admitted",
            metrics.admitted_batches.clone(),
        );
        registry.register(
            "queue_waiting_batches",
            "Batches that wait for room in a BatchQueue",
            metrics.waiting_batches.clone(),
        );
        registry.register(
            "queue_budget_bytes",
            "A BatchQueue's memory budget",
            metrics.budget_bytes.clone(),
        );
        metrics
    }

    pub fn set_queue(&self, namespace: &str, queue: &str, usage: QueueUsage) {
        let labels = QueueLabels {
            namespace: namespace.into(),
            queue: queue.into(),
        };
        set_clamped(&self.admitted_bytes, &labels, usage.admitted_bytes);
        set_clamped(&self.admitted_batches, &labels, usage.admitted_batches);
        set_clamped(&self.waiting_batches, &labels, usage.waiting_batches);
        set_clamped(&self.budget_bytes, &labels, usage.budget_bytes);
    }

    pub fn forget_queue(&self, namespace: &str, queue: &str) {
        let labels = QueueLabels {
            namespace: namespace.into(),
            queue: queue.into(),
        };
        for family in [
            &self.admitted_bytes,
            &self.admitted_batches,
            &self.waiting_batches,
            &self.budget_bytes,
        ] {
            family.remove(&labels);
        }
    }
}
