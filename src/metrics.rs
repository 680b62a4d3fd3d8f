//! The operator's own Prometheus metrics, served on `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub namespace: String,
    pub run: String,
    pub phase: String,
}

/// The phases a run can be in, each a series of `batchguard_run_phase`.
const PHASES: [&str; 5] = ["Pending", "Running", "Suspended", "Succeeded", "Failed"];

/// A run's figures after a status write.
pub struct RunFigures<'a> {
    pub phase: &'a str,
    pub live_workers: u64,
    pub records_done: u64,
    pub records: u64,
    pub peak_memory_percent: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub namespace: String,
    pub run: String,
}

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

/// Every metric the operator exports.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    pub reconcile_errors: Counter,
    pub reconcile_duration: Histogram,
    pub batches: Family<ResultLabels, Counter>,
    pub live_workers: Family<RunLabels, Gauge>,
    pub run_phase: Family<PhaseLabels, Gauge>,
    pub run_records_done: Family<RunLabels, Gauge>,
    pub run_records: Family<RunLabels, Gauge>,
    pub run_peak_memory_percent: Family<RunLabels, Gauge>,
    pub api_requests: Family<RequestLabels, Counter>,
    pub guard_queries: Counter,
    pub guard_query_failures: Counter,
    pub guard_query_duration: Histogram,
    pub guard_actions: Family<ResultLabels, Counter>,
    pub queue_admitted_bytes: Family<QueueLabels, Gauge>,
    pub queue_admitted_batches: Family<QueueLabels, Gauge>,
    pub queue_waiting_batches: Family<QueueLabels, Gauge>,
    pub queue_budget_bytes: Family<QueueLabels, Gauge>,
    /// 1 while this process reconciles (it leads, or runs without leader election), 0 while
    /// it stands by.
    pub leading: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("batchguard");
        let reconciles = Counter::default();
        let reconcile_errors = Counter::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let batches = Family::<ResultLabels, Counter>::default();
        let live_workers = Family::<RunLabels, Gauge>::default();
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register("reconciles", "Reconciles of BatchRuns", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that ended in an error",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile takes",
            reconcile_duration.clone(),
        );
        registry.register(
            "batches",
            "Settled batch attempts by result",
            batches.clone(),
        );
        registry.register(
            "live_workers",
            "Batch Jobs alive per run",
            live_workers.clone(),
        );
        let run_phase = Family::<PhaseLabels, Gauge>::default();
        let run_records_done = Family::<RunLabels, Gauge>::default();
        let run_records = Family::<RunLabels, Gauge>::default();
        let run_peak_memory_percent = Family::<RunLabels, Gauge>::default();
        registry.register(
            "run_phase",
            "1 for the phase each run is in, 0 for the others",
            run_phase.clone(),
        );
        registry.register(
            "run_records_done",
            "Records of a run whose results are counted",
            run_records_done.clone(),
        );
        registry.register(
            "run_records",
            "Records of a run in all",
            run_records.clone(),
        );
        registry.register(
            "run_peak_memory_percent",
            "Highest worker memory of a run so far, in percent of its limit",
            run_peak_memory_percent.clone(),
        );
        registry.register(
            "api_requests",
            "Requests the operator sent (watches aside), by verb and resource",
            api_requests.clone(),
        );
        let guard_queries = Counter::default();
        let guard_query_failures = Counter::default();
        let guard_query_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let guard_actions = Family::<ResultLabels, Counter>::default();
        registry.register(
            "guard_queries",
            "Memory queries sent to Prometheus",
            guard_queries.clone(),
        );
        registry.register(
            "guard_query_failures",
            "Memory queries that failed",
            guard_query_failures.clone(),
        );
        registry.register(
            "guard_query_duration_seconds",
            "Latency of memory queries",
            guard_query_duration.clone(),
        );
        registry.register(
            "guard_actions",
            "Guard actions by kind",
            guard_actions.clone(),
        );
        let queue_admitted_bytes = Family::<QueueLabels, Gauge>::default();
        let queue_admitted_batches = Family::<QueueLabels, Gauge>::default();
        let queue_waiting_batches = Family::<QueueLabels, Gauge>::default();
        let queue_budget_bytes = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queue_admitted_bytes",
            "Memory limits of the workers a BatchQueue has admitted",
            queue_admitted_bytes.clone(),
        );
        registry.register(
            "queue_admitted_batches",
            "Batch Jobs a BatchQueue has admitted",
            queue_admitted_batches.clone(),
        );
        registry.register(
            "queue_waiting_batches",
            "Batches that wait for room in a BatchQueue",
            queue_waiting_batches.clone(),
        );
        registry.register(
            "queue_budget_bytes",
            "A BatchQueue's memory budget",
            queue_budget_bytes.clone(),
        );
        let leading = Gauge::default();
        registry.register(
            "leading",
            "1 while this replica reconciles (it holds the leader Lease, or runs without leader election), 0 while it stands by",
            leading.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            batches,
            live_workers,
            run_phase,
            run_records_done,
            run_records,
            run_peak_memory_percent,
            api_requests,
            guard_queries,
            guard_query_failures,
            guard_query_duration,
            guard_actions,
            queue_admitted_bytes,
            queue_admitted_batches,
            queue_waiting_batches,
            queue_budget_bytes,
            leading,
        }
    }
}

impl Metrics {
    pub fn observe_reconcile(&self, took: Duration, failed: bool) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
        if failed {
            self.reconcile_errors.inc();
        }
    }

    pub fn count_batch(&self, result: &str) {
        self.batches
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn observe_guard_query(&self, took: Duration, failed: bool) {
        self.guard_queries.inc();
        self.guard_query_duration.observe(took.as_secs_f64());
        if failed {
            self.guard_query_failures.inc();
        }
    }

    pub fn count_guard_action(&self, action: &str) {
        self.guard_actions
            .get_or_create(&ResultLabels {
                result: action.to_string(),
            })
            .inc();
    }

    pub fn count_request(&self, verb: &str, resource: &str) {
        self.api_requests
            .get_or_create(&RequestLabels {
                verb: verb.into(),
                resource: resource.into(),
            })
            .inc();
    }

    pub fn observe_run(&self, namespace: &str, run: &str, figures: RunFigures) {
        let labels = RunLabels {
            namespace: namespace.into(),
            run: run.into(),
        };
        let set = |family: &Family<RunLabels, Gauge>, value: u64| {
            family
                .get_or_create(&labels)
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        set(&self.live_workers, figures.live_workers);
        set(&self.run_records_done, figures.records_done);
        set(&self.run_records, figures.records);
        set(
            &self.run_peak_memory_percent,
            u64::from(figures.peak_memory_percent),
        );
        for phase in PHASES {
            let labels = PhaseLabels {
                namespace: namespace.into(),
                run: run.into(),
                phase: phase.into(),
            };
            self.run_phase
                .get_or_create(&labels)
                .set(i64::from(phase == figures.phase));
        }
    }

    pub fn forget_run(&self, namespace: &str, run: &str) {
        let labels = RunLabels {
            namespace: namespace.into(),
            run: run.into(),
        };
        for family in [
            &self.live_workers,
            &self.run_records_done,
            &self.run_records,
            &self.run_peak_memory_percent,
        ] {
            family.remove(&labels);
        }
        for phase in PHASES {
            self.run_phase.remove(&PhaseLabels {
                namespace: namespace.into(),
                run: run.into(),
                phase: phase.into(),
            });
        }
    }

    pub fn set_queue(&self, namespace: &str, queue: &str, usage: QueueUsage) {
        let labels = QueueLabels {
            namespace: namespace.into(),
            queue: queue.into(),
        };
        let set = |family: &Family<QueueLabels, Gauge>, value: u64| {
            family
                .get_or_create(&labels)
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        set(&self.queue_admitted_bytes, usage.admitted_bytes);
        set(&self.queue_admitted_batches, usage.admitted_batches);
        set(&self.queue_waiting_batches, usage.waiting_batches);
        set(&self.queue_budget_bytes, usage.budget_bytes);
    }

    pub fn forget_queue(&self, namespace: &str, queue: &str) {
        let labels = QueueLabels {
            namespace: namespace.into(),
            queue: queue.into(),
        };
        for family in [
            &self.queue_admitted_bytes,
            &self.queue_admitted_batches,
            &self.queue_waiting_batches,
            &self.queue_budget_bytes,
        ] {
            family.remove(&labels);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
