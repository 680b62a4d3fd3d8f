//! The operator's own Prometheus metrics, served on `/metrics`: one registry, a struct per
//! concern (runs, the guard, queues, API requests).

mod api;
mod guard;
mod queues;
mod runs;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use api::{ApiMetrics, CountRequests, RequestLabels, request_labels};
pub use guard::GuardMetrics;
pub use queues::{QueueLabels, QueueMetrics, QueueUsage};
pub use runs::{ErrorLabels, PhaseLabels, RunFigures, RunLabels, RunMetrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    pub registry: Registry,
    pub runs: RunMetrics,
    pub api: ApiMetrics,
    pub guard: GuardMetrics,
    pub queues: QueueMetrics,
    /// 1 while this process reconciles (it leads, or runs without leader election), 0 while
    /// it stands by.
    pub leading: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("batchguard");
        // Registered in this order, so /metrics lists them as it always has.
        let runs = RunMetrics::register(&mut registry);
        let api = ApiMetrics::register(&mut registry);
        let guard = GuardMetrics::register(&mut registry);
        let queues = QueueMetrics::register(&mut registry);
        let leading = Gauge::default();
        registry.register(
            "leading",
            "1 while this replica reconciles (it holds the leader Lease, or runs without leader election), 0 while it stands by",
            leading.clone(),
        );
        Self {
            registry,
            runs,
            api,
            guard,
            queues,
            leading,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Sets a gauge to a count, clamped to what a gauge holds.
fn set_clamped<L>(family: &Family<L, Gauge>, labels: &L, value: u64)
where
    L: Clone + std::hash::Hash + Eq,
{
    family
        .get_or_create(labels)
        .set(i64::try_from(value).unwrap_or(i64::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dashboards and alerts query these names: the split must not rename one.
    #[test]
    fn every_metric_keeps_its_name_type_and_help() {
        let text = Metrics::default().render();
        let described: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("# HELP") || l.starts_with("# TYPE"))
            .collect();
        let expected = [
            "# HELP batchguard_reconciles Reconciles of BatchRuns.",
            "# TYPE batchguard_reconciles counter",
            "# HELP batchguard_reconcile_errors Reconciles that ended in an error.",
            "# TYPE batchguard_reconcile_errors counter",
            "# HELP batchguard_reconcile_duration_seconds Time one reconcile takes.",
            "# TYPE batchguard_reconcile_duration_seconds histogram",
            "# HELP batchguard_batches Settled batch attempts by result.",
            "# TYPE batchguard_batches counter",
            "# HELP batchguard_live_workers Batch Jobs alive per run.",
            "# TYPE batchguard_live_workers gauge",
            "# HELP batchguard_run_phase 1 for the phase each run is in, 0 for the others.",
            "# TYPE batchguard_run_phase gauge",
            "# HELP batchguard_run_records_done Records of a run whose results are counted.",
            "# TYPE batchguard_run_records_done gauge",
            "# HELP batchguard_run_records Records of a run in all.",
            "# TYPE batchguard_run_records gauge",
            "# HELP batchguard_run_peak_memory_percent Highest worker memory of a run so far, in percent of its limit.",
            "# TYPE batchguard_run_peak_memory_percent gauge",
            "# HELP batchguard_api_requests Requests the operator sent (watches aside), by verb and resource.",
            "# TYPE batchguard_api_requests counter",
            "# HELP batchguard_guard_queries Memory queries sent to Prometheus.",
            "# TYPE batchguard_guard_queries counter",
            "# HELP batchguard_guard_query_failures Memory queries that failed.",
            "# TYPE batchguard_guard_query_failures counter",
            "# HELP batchguard_guard_query_duration_seconds Latency of memory queries.",
            "# TYPE batchguard_guard_query_duration_seconds histogram",
            "# HELP batchguard_guard_actions Guard actions by kind.",
            "# TYPE batchguard_guard_actions counter",
            "# HELP batchguard_queue_admitted_bytes Memory limits of the workers a BatchQueue has admitted.",
            "# TYPE batchguard_queue_admitted_bytes gauge",
            "# HELP batchguard_queue_admitted_batches Batch Jobs a BatchQueue has admitted.",
            "# TYPE batchguard_queue_admitted_batches gauge",
            "# HELP batchguard_queue_waiting_batches Batches that wait for room in a BatchQueue.",
            "# TYPE batchguard_queue_waiting_batches gauge",
            "# HELP batchguard_queue_budget_bytes A BatchQueue's memory budget.",
            "# TYPE batchguard_queue_budget_bytes gauge",
            "# HELP batchguard_leading 1 while this replica reconciles (it holds the leader Lease, or runs without leader election), 0 while it stands by.",
            "# TYPE batchguard_leading gauge",
        ];
        assert_eq!(described, expected);
    }
}
