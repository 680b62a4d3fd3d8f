//! Metrics of the run controller: reconciles, settled batches and each run's figures.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::{ResultLabels, set_clamped};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub namespace: String,
    pub run: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub namespace: String,
    pub run: String,
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

pub struct RunMetrics {
    pub reconciles: Counter,
    /// By the step that failed (`controller::Error::metric_label`).
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub batches: Family<ResultLabels, Counter>,
    pub live_workers: Family<RunLabels, Gauge>,
    pub run_phase: Family<PhaseLabels, Gauge>,
    pub run_records_done: Family<RunLabels, Gauge>,
    pub run_records: Family<RunLabels, Gauge>,
    pub run_peak_memory_percent: Family<RunLabels, Gauge>,
}

impl RunMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            batches: Family::default(),
            live_workers: Family::default(),
            run_phase: Family::default(),
            run_records_done: Family::default(),
            run_records: Family::default(),
            run_peak_memory_percent: Family::default(),
        };
        registry.register(
            "reconciles",
            "Reconciles of BatchRuns",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that ended in an error",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile takes",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "batches",
            "Settled batch attempts by result",
            metrics.batches.clone(),
        );
        registry.register(
            "live_workers",
            "Batch Jobs alive per run",
            metrics.live_workers.clone(),
        );
        registry.register(
            "run_phase",
            "1 for the phase each run is in, 0 for the others",
            metrics.run_phase.clone(),
        );
        registry.register(
            "run_records_done",
            "Records of a run whose results are counted",
            metrics.run_records_done.clone(),
        );
        registry.register(
            "run_records",
            "Records of a run in all",
            metrics.run_records.clone(),
        );
        registry.register(
            "run_peak_memory_percent",
            "Highest worker memory of a run so far, in percent of its limit",
            metrics.run_peak_memory_percent.clone(),
        );
        metrics
    }

    /// Shows a zero for each kind of error before the first one, so that error rates read 0
    /// rather than "no data".
    pub fn expect_errors<'a>(&self, labels: impl IntoIterator<Item = &'a str>) {
        for error in labels {
            let _ = self.reconcile_errors.get_or_create(&ErrorLabels {
                error: error.into(),
            });
        }
    }

    /// `error` is the failed step's label, for a reconcile that failed.
    pub fn observe_reconcile(&self, took: Duration, error: Option<&str>) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
        if let Some(error) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels {
                    error: error.into(),
                })
                .inc();
        }
    }

    pub fn count_batch(&self, result: &str) {
        self.batches
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn observe_run(&self, namespace: &str, run: &str, figures: RunFigures) {
        let labels = RunLabels {
            namespace: namespace.into(),
            run: run.into(),
        };
        set_clamped(&self.live_workers, &labels, figures.live_workers);
        set_clamped(&self.run_records_done, &labels, figures.records_done);
        set_clamped(&self.run_records, &labels, figures.records);
        set_clamped(
            &self.run_peak_memory_percent,
            &labels,
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
}
