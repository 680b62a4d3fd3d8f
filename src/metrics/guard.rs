//! Metrics of the memory guard: its Prometheus queries and the actions it takes.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::ResultLabels;

pub struct GuardMetrics {
    pub queries: Counter,
    pub query_failures: Counter,
    pub query_duration: Histogram,
    pub actions: Family<ResultLabels, Counter>,
}

impl GuardMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            queries: Counter::default(),
            query_failures: Counter::default(),
            query_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            actions: Family::default(),
        };
        registry.register(
            "guard_queries",
            "Memory queries sent to Prometheus",
            metrics.queries.clone(),
        );
        registry.register(
            "guard_query_failures",
            "Memory queries that failed",
            metrics.query_failures.clone(),
        );
        registry.register(
            "guard_query_duration_seconds",
            "Latency of memory queries",
            metrics.query_duration.clone(),
        );
        registry.register(
            "guard_actions",
            "Guard actions by kind",
            metrics.actions.clone(),
        );
        metrics
    }

    pub fn observe_query(&self, took: Duration, failed: bool) {
        self.queries.inc();
        self.query_duration.observe(took.as_secs_f64());
        if failed {
            self.query_failures.inc();
        }
    }

    pub fn count_action(&self, action: &str) {
        self.actions
            .get_or_create(&ResultLabels {
                result: action.to_string(),
            })
            .inc();
    }
}
