//! Table-style tests of the planner, and a simulation that crashes the executor at every
//! step to show that results are counted exactly once.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::PodTemplateSpec;

use super::*;

use crate::api::{
    BatchReason, BatchRunSpec, BatchRunStatus, InputSpec, MemoryResources, Phase, RecordRange,
    RecordRangeSpec, WorkerResources,
};

fn spec(end: i64, batch_size: u64, parallelism: u32) -> BatchRunSpec {
    BatchRunSpec {
        input: InputSpec {
            range: Some(RecordRangeSpec { start: 0, end }),
            items: None,
            batch_size,
        },
        parallelism,
        template: PodTemplateSpec::default(),
        resources: WorkerResources {
            memory: MemoryResources {
                request: "1Gi".into(),
                limit: "2Gi".into(),
                max: None,
            },
        },
        memory_guard: Default::default(),
        retry: Default::default(),
        retention: Default::default(),
        suspend: false,
        queue: None,
        kueue: None,
        start_timeout_seconds: 120,
    }
}

fn t0() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

/// A tiny cluster: the executor's effects applied to an in-memory run, Jobs and pods.
struct Sim {
    spec: BatchRunSpec,
    status: BatchRunStatus,
    attempts: Vec<ObservedAttempt>,
    now: Timestamp,
    memory: Option<RunMemory>,
    seat: Option<Seat>,
    retry_request: Option<String>,
}

impl Sim {
    fn new(spec: BatchRunSpec) -> Self {
        Self {
            spec,
            status: BatchRunStatus::default(),
            attempts: vec![],
            now: t0(),
            memory: None,
            seat: None,
            retry_request: None,
        }
    }

    fn plan(&self) -> Plan {
        plan(&Observed {
            run_name: "run",
            run_uid: "uid",
            generation: 1,
            spec: &self.spec,
            status: &self.status,
            attempts: &self.attempts,
            now: self.now,
            memory: self.memory.as_ref(),
            seat: self.seat.clone(),
            retry_request: self.retry_request.as_deref(),
            refused: None,
        })
    }

    /// Runs one reconcile; `steps` is how many executor steps happen before a crash
    /// (1: status only, 2: + finalizers, 3: + Jobs).
    fn reconcile_with_crash(&mut self, steps: usize) -> Plan {
        let plan = self.plan();
        if steps >= 1
            && let Some(status) = &plan.status
        {
            self.status = status.clone();
        }
        if steps >= 2 {
            for pod in self.attempts.iter_mut().flat_map(|a| a.pods.iter_mut()) {
                if plan.release.contains(&pod.name) {
                    pod.holds_result = false;
                }
            }
        }
        if steps >= 3 {
            for launch in &plan.launch {
                if !self
                    .attempts
                    .iter()
                    .any(|a| a.range == launch.range && a.attempt == launch.attempt)
                {
                    let mut attempt = running(launch.range, launch.attempt);
                    attempt.pods[0].memory_limit = launch.memory_limit;
                    self.attempts.push(attempt);
                }
            }
        }
        plan
    }

    fn reconcile(&mut self) -> Plan {
        self.reconcile_with_crash(3)
    }

    fn alive(&self) -> usize {
        self.attempts.iter().filter(|a| a.is_alive()).count()
    }

    /// The worker of the attempt at `index` ends; its Job turns terminal.
    fn end(&mut self, index: usize, exit_code: i32, reason: &str, message: &str) {
        let attempt = &mut self.attempts[index];
        attempt.pods[0].exit = Some(WorkerExit {
            exit_code,
            reason: reason.into(),
            message: message.into(),
            finished_at: Some(self.now),
        });
        attempt.pods[0].ended = true;
        attempt.job.as_mut().unwrap().finished = Some(JobFinish {
            failed: exit_code != 0,
            reason: reason.into(),
            message: String::new(),
            at: Some(self.now),
        });
    }

    fn succeed(&mut self, index: usize) {
        let range = self.attempts[index].range;
        let message = format!(
            r#"{{"records": {}, "sums": {{"amount": {}}}, "outputs": ["part-{}"]}}"#,
            range.len(),
            range.len(),
            range.start
        );
        self.end(index, 0, "Completed", &message);
    }

    /// Removes Jobs and pods whose result is released (TTL controller and garbage collector).
    fn collect_garbage(&mut self) {
        self.attempts.retain(|a| {
            a.pods.iter().any(|p| p.holds_result) || a.pods.iter().any(|p| p.exit.is_none())
        });
    }

    fn running_indexes(&self) -> Vec<usize> {
        (0..self.attempts.len())
            .filter(|i| self.attempts[*i].pods[0].exit.is_none())
            .collect()
    }
}

fn running(range: RecordRange, attempt: u32) -> ObservedAttempt {
    ObservedAttempt {
        range,
        attempt,
        job: Some(JobState {
            name: format!("job-{}-{attempt}", range.start),
            deleting: false,
            finished: None,
            created: None,
            pod_refused: None,
        }),
        pods: vec![PodState {
            name: format!("pod-{}-{attempt}", range.start),
            holds_result: true,
            deleting: false,
            exit: None,
            guard_action: None,
            memory_limit: None,
            resizes: 0,
            ended: false,
            waiting: None,
        }],
    }
}

#[test]
fn a_new_run_launches_up_to_parallelism_batches() {
    let mut sim = Sim::new(spec(100, 10, 3));
    let plan = sim.reconcile();
    let ranges: Vec<_> = plan
        .launch
        .iter()
        .map(|l| (l.range.start, l.range.end, l.attempt))
        .collect();
    assert_eq!(ranges, vec![(0, 10, 1), (10, 20, 1), (20, 30, 1)]);
    let status = plan.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Running));
    assert_eq!(status.batches.running, 3);
    assert_eq!(status.progress.as_deref(), Some("0/100"));
    assert!(status.start_time.is_some());
}

#[test]
fn nothing_launches_while_parallelism_is_used() {
    let mut sim = Sim::new(spec(100, 10, 3));
    sim.reconcile();
    let plan = sim.reconcile();
    assert!(plan.launch.is_empty());
    assert_eq!(plan.status, None, "an unchanged run is not written again");
}

#[test]
fn a_finished_batch_is_counted_released_and_replaced() {
    let mut sim = Sim::new(spec(100, 10, 3));
    sim.reconcile();
    sim.succeed(1);
    let plan = sim.reconcile();
    let status = plan.status.as_ref().unwrap();
    assert_eq!(status.completed, "10-19");
    assert_eq!(status.aggregate.records, 10);
    assert_eq!(status.aggregate.sums["amount"], 10.0);
    assert_eq!(status.batches.succeeded, 1);
    assert_eq!(plan.release, vec!["pod-10-1".to_string()]);
    assert_eq!(
        plan.launch,
        vec![Launch {
            range: RecordRange::new(30, 40),
            attempt: 1,
            memory_limit: None,
        }]
    );
    assert_eq!(sim.alive(), 3);
}

#[test]
fn a_result_already_in_status_is_not_counted_again() {
    let mut sim = Sim::new(spec(100, 10, 3));
    sim.reconcile();
    sim.succeed(0);
    sim.reconcile_with_crash(1); // status written, then the operator died
    let plan = sim.reconcile();
    assert_eq!(sim.status.aggregate.records, 10);
    assert_eq!(plan.release, vec!["pod-0-1".to_string()]);
    assert!(
        plan.status
            .as_ref()
            .is_none_or(|s| s.aggregate.records == 10)
    );
}

#[test]
fn a_failed_batch_is_retried_after_its_backoff() {
    let mut sim = Sim::new(spec(10, 10, 1));
    sim.reconcile();
    sim.end(0, 1, "Error", "boom");
    let plan = sim.reconcile();
    let status = plan.status.as_ref().unwrap();
    assert_eq!(status.pending.len(), 1);
    assert_eq!(
        (status.pending[0].attempt, status.pending[0].failures),
        (2, 1)
    );
    assert_eq!(status.failures[0].reason, BatchReason::from("Error"));
    assert!(status.failures[0].message.contains("boom"));
    let wait = status.pending[0]
        .not_before
        .as_ref()
        .map(|t| t.0.duration_since(sim.now).unsigned_abs());
    if let Some(wait) = wait {
        assert!(plan.launch.is_empty(), "no retry before the backoff ends");
        assert_eq!(
            plan.requeue_after,
            Some(wait.min(plan.requeue_after.unwrap()))
        );
        sim.now += wait + Duration::from_secs(1);
    }
    sim.collect_garbage();
    let plan = sim.reconcile();
    assert_eq!(
        plan.launch,
        vec![Launch {
            range: RecordRange::new(0, 10),
            attempt: 2,
            memory_limit: None,
        }]
    );
}

#[test]
fn a_batch_failing_every_attempt_fails_the_run_with_its_range() {
    let mut sim = Sim::new(spec(20, 10, 2));
    sim.spec.retry.backoff.base_seconds = 0;
    sim.spec.retry.backoff.max_seconds = 0;
    sim.reconcile();
    for _ in 0..3 {
        let index = sim
            .attempts
            .iter()
            .position(|a| a.range.start == 0 && a.pods[0].exit.is_none())
            .unwrap();
        sim.end(index, 2, "Error", "bad row");
        sim.reconcile();
        sim.collect_garbage();
    }
    let index = sim.running_indexes()[0];
    sim.succeed(index);
    sim.reconcile();
    sim.collect_garbage();
    let plan = sim.reconcile();
    let status = plan.status.unwrap_or(sim.status.clone());
    assert_eq!(status.phase, Some(Phase::Failed));
    assert_eq!(status.failed, "0-9");
    assert_eq!(status.completed, "10-19");
    let failed = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed")
        .unwrap();
    assert!(
        failed.message.contains("records 0-9 failed"),
        "{}",
        failed.message
    );
    assert!(failed.message.contains("bad row"), "{}", failed.message);
}

#[test]
fn the_run_succeeds_when_every_record_is_done() {
    let mut sim = Sim::new(spec(25, 10, 5));
    sim.reconcile();
    for i in sim.running_indexes() {
        sim.succeed(i);
    }
    let plan = sim.reconcile();
    let status = plan.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded));
    assert_eq!(status.completed, "0-24");
    assert_eq!(status.progress.as_deref(), Some("25/25"));
    assert!(status.completion_time.is_some());
    assert!(
        plan.notices
            .iter()
            .any(|n| matches!(n, Notice::Finished(RunState::Succeeded { .. })))
    );
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True")
    );
}

#[test]
fn a_suspended_run_launches_nothing() {
    let mut sim = Sim::new(spec(100, 10, 3));
    sim.spec.suspend = true;
    let plan = sim.reconcile();
    assert!(plan.launch.is_empty());
    assert_eq!(plan.status.unwrap().phase, Some(Phase::Suspended));
}

#[test]
fn a_queued_range_whose_job_exists_is_not_launched_again() {
    let mut sim = Sim::new(spec(10, 10, 2));
    sim.spec.retry.backoff.base_seconds = 0;
    sim.reconcile();
    sim.end(0, 1, "Error", "x");
    sim.reconcile();
    let attempt_two = sim.attempts.iter().filter(|a| a.attempt == 2).count();
    assert_eq!(attempt_two, 1);
    let plan = sim.reconcile();
    assert!(plan.launch.is_empty());
}

#[test]
fn jobs_missing_from_a_stale_cache_are_cut_the_same_way() {
    let mut sim = Sim::new(spec(100, 10, 3));
    let first = sim.reconcile();
    sim.attempts.clear(); // the Job cache has not seen the new Jobs yet
    let again = sim.plan();
    assert_eq!(first.launch, again.launch, "same ranges, so same Job names");
}

#[test]
fn too_many_failed_batches_stop_the_run() {
    let mut sim = Sim::new(spec(100, 10, 2));
    sim.spec.retry.max_attempts = 1;
    sim.spec.retry.max_failed_batches = 1;
    sim.reconcile();
    sim.end(0, 1, "Error", "x");
    sim.end(1, 1, "Error", "y");
    let plan = sim.reconcile();
    assert!(plan.launch.is_empty());
    let status = plan.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Failed));
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Failed" && c.message.contains("the run stopped"))
    );
}

#[test]
fn a_full_retry_queue_stops_fresh_batches() {
    let mut sim = Sim::new(spec(100_000, 10, 5));
    sim.status.pending = (0..MAX_PENDING as u64)
        .map(|i| crate::api::PendingBatch {
            start: i * 10,
            end: i * 10 + 10,
            attempt: 2,
            failures: 1,
            not_before: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                t0() + Duration::from_secs(60),
            )),
            reason: "Error".into(),
            memory_limit: None,
        })
        .collect();
    let plan = sim.reconcile();
    assert!(plan.launch.is_empty());
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(60)));
}

#[test]
fn an_unreadable_status_is_reported_not_guessed() {
    let mut sim = Sim::new(spec(100, 10, 3));
    sim.status.completed = "zero-ten".into();
    let plan = sim.reconcile();
    assert!(plan.launch.is_empty());
    let status = plan.status.unwrap();
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.reason == "InvalidStatus")
    );
}

#[test]
fn failed_pods_are_kept_for_their_retention_then_released() {
    let mut sim = Sim::new(spec(10, 10, 1));
    sim.spec.retention.failed_seconds = 60;
    sim.reconcile();
    sim.end(0, 1, "Error", "x");
    let plan = sim.reconcile();
    assert!(plan.release.is_empty());
    assert_eq!(
        plan.requeue_after.map(|d| d <= Duration::from_secs(60)),
        Some(true)
    );
    sim.now += Duration::from_secs(61);
    let plan = sim.reconcile();
    assert_eq!(plan.release, vec!["pod-0-1".to_string()]);
}

/// Runs a whole 40-batch run where the executor crashes after a varying number of steps in
/// every reconcile and workers finish in a scrambled order; the aggregate must be exact.
#[test]
fn crashes_at_any_step_never_lose_or_double_count_a_result() {
    for seed in 0..30u64 {
        let mut sim = Sim::new(spec(400, 10, 4));
        sim.spec.retry.backoff.base_seconds = 0;
        sim.spec.retry.backoff.max_seconds = 0;
        let mut rng = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) as usize
        };
        for _ in 0..2000 {
            if sim.status.phase == Some(Phase::Succeeded) {
                break;
            }
            let running = sim.running_indexes();
            if !running.is_empty() && next() % 2 == 0 {
                let index = running[next() % running.len()];
                if next() % 7 == 0 && sim.attempts[index].attempt == 1 {
                    sim.end(index, 1, "Error", "flaky");
                } else {
                    sim.succeed(index);
                }
            }
            sim.reconcile_with_crash(1 + next() % 3);
            if next() % 3 == 0 {
                sim.collect_garbage();
            }
            assert!(sim.alive() <= 4, "parallelism exceeded");
        }
        assert_eq!(sim.status.phase, Some(Phase::Succeeded), "seed {seed}");
        assert_eq!(sim.status.aggregate.records, 400, "seed {seed}");
        assert_eq!(sim.status.aggregate.sums["amount"], 400.0, "seed {seed}");
        assert_eq!(sim.status.aggregate.outputs.count, 40, "seed {seed}");
    }
}

#[test]
fn later_batches_shrink_to_fit_the_memory_learned_from_finished_ones() {
    let mut sim = Sim::new(spec(10_000, 1000, 1));
    sim.reconcile();
    // The first batch peaked at 90% of 2Gi for 1000 records.
    sim.memory = Some(RunMemory {
        pods: [(
            "pod-0-1".to_string(),
            PodMemory {
                fraction: 0.9,
                peak_fraction: 0.9,
                ..Default::default()
            },
        )]
        .into(),
        ..Default::default()
    });
    sim.succeed(0);
    let plan = sim.reconcile();
    let status = plan.status.unwrap();
    let per_record = status.guard.bytes_per_record;
    assert_eq!(
        per_record,
        (0.9 * 2.0 * 1024.0 * 1024.0 * 1024.0 / 1000.0_f64).ceil() as u64
    );
    // 85% threshold with a 0.8 margin: 0.68 of the limit over 0.9 per 1000 records.
    assert_eq!(status.guard.batch_size, 755);
    assert_eq!(
        plan.launch,
        vec![Launch {
            range: RecordRange::new(1000, 1755),
            attempt: 1,
            memory_limit: None,
        }]
    );
    assert_eq!(
        status.pending.len(),
        1,
        "an off-grid cut is remembered before its Job exists"
    );
    assert_eq!(status.pending[0].reason, BatchReason::Sized);
    assert_eq!(status.batches.retrying, 0);
}

#[test]
fn memory_is_learned_against_the_limit_the_worker_ran_with() {
    // The run's limit is 2Gi; the batch ran with more memory, 4Gi, and peaked at 45% of it.
    let mut sim = Sim::new(spec(10_000, 1000, 1));
    sim.reconcile();
    sim.memory = Some(RunMemory {
        pods: [(
            "pod-0-1".to_string(),
            PodMemory {
                fraction: 0.45,
                peak_fraction: 0.45,
                limit: "4Gi".into(),
                limit_bytes: 4 << 30,
                peak_bytes: 0,
            },
        )]
        .into(),
        ..Default::default()
    });
    sim.succeed(0);
    let status = sim.reconcile().status.unwrap();
    assert_eq!(
        status.guard.bytes_per_record,
        (0.45 * 4.0 * 1024.0 * 1024.0 * 1024.0 / 1000.0_f64).ceil() as u64
    );
}

#[test]
fn batches_well_below_the_threshold_do_not_shrink_later_ones() {
    let mut sim = Sim::new(spec(10_000, 1000, 1));
    sim.reconcile();
    sim.memory = Some(RunMemory {
        pods: [(
            "pod-0-1".to_string(),
            PodMemory {
                fraction: 0.4,
                peak_fraction: 0.4,
                ..Default::default()
            },
        )]
        .into(),
        ..Default::default()
    });
    sim.succeed(0);
    let plan = sim.reconcile();
    let status = plan.status.unwrap();
    assert_eq!(
        (status.guard.bytes_per_record, status.guard.batch_size),
        (0, 1000)
    );
    assert_eq!(
        plan.launch,
        vec![Launch {
            range: RecordRange::new(1000, 2000),
            attempt: 1,
            memory_limit: None,
        }]
    );
}

#[test]
fn adaptive_size_never_exceeds_the_configured_batch_size() {
    let spec = spec(100, 10, 1);
    let model = |bytes_per_record| {
        Some(MemoryModel {
            baseline_bytes: 0,
            bytes_per_record,
        })
    };
    assert_eq!(sizing::batch_size(&spec, model(1), 1 << 30), 10);
    assert_eq!(sizing::batch_size(&spec, model(0), 1 << 30), 10);
    assert_eq!(sizing::batch_size(&spec, None, 1 << 30), 10);
    assert_eq!(sizing::batch_size(&spec, model(u64::MAX / 2), 1 << 30), 1);
}

#[test]
fn memory_pressure_condition_follows_the_guard() {
    let mut sim = Sim::new(spec(100, 10, 2));
    let find = |plan: &Plan| {
        plan.status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == "MemoryPressure")
            .cloned()
            .unwrap()
    };
    let off = sim.reconcile();
    assert_eq!(
        (find(&off).status.as_str(), find(&off).reason.as_str()),
        ("Unknown", "GuardOff")
    );

    sim.memory = Some(RunMemory {
        pods: [(
            "pod-0-1".to_string(),
            PodMemory {
                fraction: 0.91,
                peak_fraction: 0.91,
                ..Default::default()
            },
        )]
        .into(),
        ..Default::default()
    });
    let hot = sim.reconcile();
    let c = find(&hot);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "AboveThreshold")
    );
    assert!(
        c.message.contains("pod-0-1 at 91% of its 2Gi limit"),
        "{}",
        c.message
    );
    assert_eq!(hot.status.as_ref().unwrap().guard.peak_percent, 91);

    sim.memory = Some(RunMemory {
        blind: Some(Blindness {
            since: t0(),
            reason: "Prometheus query failed".into(),
        }),
        ..Default::default()
    });
    let blind = sim.reconcile();
    let c = find(&blind);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("Unknown", "GuardBlind")
    );
    assert!(c.message.contains("Prometheus query failed"));
    assert_eq!(
        blind.status.as_ref().unwrap().guard.peak_percent,
        91,
        "the peak survives a blind spell"
    );
}

#[test]
fn memory_pressure_is_reported_at_the_threshold_where_the_guard_acts() {
    // 0.29 * 100.0 is 28.999…: the condition once said False where the guard drained.
    let mut spec = spec(100, 10, 2);
    spec.memory_guard.threshold = 29;
    let mut sim = Sim::new(spec);
    sim.reconcile();
    sim.memory = Some(RunMemory {
        pods: [(
            "pod-0-1".to_string(),
            PodMemory {
                fraction: 0.29,
                peak_fraction: 0.29,
                ..Default::default()
            },
        )]
        .into(),
        ..Default::default()
    });
    let plan = sim.reconcile();
    let pressure = plan
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "MemoryPressure"))
        .unwrap();
    assert_eq!(
        (pressure.status.as_str(), pressure.reason.as_str()),
        ("True", "AboveThreshold")
    );
}

#[test]
fn a_drained_worker_continues_in_a_new_job() {
    let mut sim = Sim::new(spec(100, 100, 1));
    sim.reconcile();
    sim.attempts[0].pods[0].guard_action = Some(crate::api::GuardAction::Drain);
    sim.end(0, 143, "Error", r#"{"records": 40, "resumeFrom": 40}"#);
    let plan = sim.reconcile();
    let status = plan.status.as_ref().unwrap();
    assert_eq!(status.completed, "0-39");
    assert_eq!(status.guard.drains, 1);
    assert_eq!(status.batches.drained, 1);
    assert!(status.failures.is_empty());
    // The default onPressure is Split: the 60 remaining records go in two halves.
    assert_eq!(
        plan.launch,
        vec![Launch {
            range: RecordRange::new(40, 70),
            attempt: 2,
            memory_limit: None,
        }]
    );
}

#[test]
fn a_retry_request_reruns_the_failed_ranges_of_a_failed_run_once() {
    let mut sim = Sim::new(spec(100, 50, 2));
    sim.spec.retry.max_attempts = 1;
    sim.spec.retry.max_failed_batches = 0;
    sim.reconcile();
    sim.succeed(0);
    sim.end(1, 1, "Error", "bad row");
    let status = sim.reconcile().status.unwrap();
    assert_eq!(status.phase, Some(Phase::Failed));
    assert!(status.completion_time.is_some());

    // A user asks for the failed records again: they run as a new attempt.
    sim.retry_request = Some("2026-11-23T10:00:00Z".into());
    let plan = sim.reconcile();
    assert!(plan.notices.contains(&Notice::Retried { batches: 1 }));
    assert_eq!(
        plan.launch,
        vec![Launch {
            range: RecordRange::new(50, 100),
            attempt: 2,
            memory_limit: None,
        }]
    );
    let status = plan.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Running));
    assert_eq!(status.completion_time, None);
    assert_eq!(status.failed, "");
    assert_eq!(
        status.retried_failed.as_deref(),
        Some("2026-11-23T10:00:00Z")
    );

    let index = sim.attempts.iter().position(|a| a.attempt == 2).unwrap();
    sim.succeed(index);
    let status = sim.reconcile().status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded));
    assert_eq!(status.aggregate.records, 100, "each record counted once");
    assert!(status.completion_time.is_some());

    // The same request again changes nothing.
    let plan = sim.reconcile();
    assert!(plan.launch.is_empty() && plan.status.is_none(), "{plan:?}");
}

#[test]
fn an_oom_killed_record_is_launched_again_with_more_memory_from_the_status() {
    let mut spec = spec(2, 1, 2);
    spec.resources.memory.max = Some("3Gi".into());
    let mut sim = Sim::new(spec);
    sim.reconcile();
    sim.end(1, 137, "OOMKilled", "");
    // A crash after the status write: the grown memory is read back from the status.
    let first = sim.reconcile_with_crash(1);
    assert!(first.launch.is_empty() || first.launch[0].memory_limit == Some(3 << 30));
    assert_eq!(sim.status.pending[0].memory_limit.as_deref(), Some("3Gi"));
    let plan = sim.reconcile();
    assert_eq!(
        plan.launch,
        vec![Launch {
            range: RecordRange::new(1, 2),
            attempt: 2,
            memory_limit: Some(3 << 30),
        }]
    );
    assert!(
        plan.notices.is_empty(),
        "the OOM kill was announced once, before the crash"
    );
    let again = sim.attempts.len() - 1;
    assert_eq!(sim.attempts[again].pods[0].memory_limit, Some(3 << 30));
    sim.succeed(0);
    sim.succeed(again);
    let status = sim.reconcile().status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded));
    assert_eq!(status.completed, "0-1");
    assert_eq!(status.aggregate.records, 2);
    assert_eq!(status.guard.oom_kills, 1);
    assert_eq!(status.failures[0].memory_limit.as_deref(), Some("2Gi"));
}
#[test]
fn the_memory_condition_measures_a_pod_against_its_own_limit() {
    // The run's limit is 2Gi now; the batch ran under 1Gi and peaked at 90% of that.
    let mut sim = Sim::new(spec(10_000, 1000, 1));
    sim.reconcile();
    sim.memory = Some(RunMemory {
        pods: [(
            "pod-0-1".to_string(),
            PodMemory {
                fraction: 0.9,
                peak_fraction: 0.9,
                limit: "1Gi".into(),
                limit_bytes: 1 << 30,
                peak_bytes: 0,
            },
        )]
        .into(),
        ..Default::default()
    });
    let hot = sim.reconcile();
    let c = hot
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "MemoryPressure")
        .unwrap()
        .clone();
    assert!(
        c.message.contains("pod-0-1 at 90% of its 1Gi limit"),
        "{}",
        c.message
    );
}

#[test]
fn a_worker_grown_in_place_is_learned_from_its_peak_in_bytes() {
    // It peaked at 90% of 2Gi, then was grown to 4Gi: the peak fraction is of the old limit.
    let mut sim = Sim::new(spec(10_000, 1000, 1));
    sim.reconcile();
    sim.memory = Some(RunMemory {
        pods: [(
            "pod-0-1".to_string(),
            PodMemory {
                fraction: 0.45,
                peak_fraction: 0.9,
                limit: "4Gi".into(),
                limit_bytes: 4 << 30,
                peak_bytes: (0.9 * (2u64 << 30) as f64) as u64,
            },
        )]
        .into(),
        ..Default::default()
    });
    sim.succeed(0);
    let status = sim.reconcile().status.unwrap();
    assert_eq!(
        status.guard.memory_samples,
        vec![crate::api::MemorySample {
            records: 1000,
            peak_bytes: (0.9 * (2u64 << 30) as f64) as u64,
        }]
    );
}
