//! The real planner driven through a whole run by a synthetic cluster: how large the status
//! grows at a scale the local cluster cannot reach.

use batchguard::api::{BatchRunStatus, Phase, RecordRange};
use batchguard::plan::{
    JobFinish, JobState, Observed, ObservedAttempt, PodState, WorkerExit, plan,
};

use crate::workloads::{Work, batch_run_of};

/// Drives the real planner through a whole run against a synthetic cluster where workers
/// finish in random order, and returns the largest status it wrote (JSON bytes).
pub fn planner_status_size(batches: u64, batch_size: u64, parallelism: u32) -> usize {
    let spec = {
        let work = Work {
            batches,
            duration: "1s".into(),
            parallelism,
        };
        let mut spec = batch_run_of("r", &work, None).spec;
        spec.input.batch_size = batch_size;
        if let Some(range) = spec.input.range.as_mut() {
            range.end = (batches * batch_size) as i64;
        }
        spec
    };
    let mut status = BatchRunStatus::default();
    let mut attempts: Vec<ObservedAttempt> = vec![];
    let mut seed = 42u64;
    let mut largest = 0;
    let now = jiff::Timestamp::now();
    for _ in 0..(batches * 4) {
        let observed = Observed {
            run_name: "r",
            run_uid: "u",
            generation: 1,
            spec: &spec,
            status: &status,
            attempts: &attempts,
            now,
            memory: None,
            seat: None,
            retry_request: None,
            refused: None,
        };
        let planned = plan(&observed);
        if let Some(new) = planned.status {
            largest = largest.max(serde_json::to_vec(&new).unwrap().len());
            status = new;
        }
        attempts.retain(|a| {
            !planned
                .release
                .iter()
                .any(|p| a.pods.iter().any(|q| &q.name == p))
        });
        for launch in planned.launch {
            attempts.push(ObservedAttempt {
                range: launch.range,
                attempt: launch.attempt,
                job: Some(JobState {
                    name: format!("j{}", launch.range.start),
                    deleting: false,
                    finished: None,
                    created: None,
                    pod_refused: None,
                }),
                pods: vec![PodState {
                    name: format!("p{}-{}", launch.range.start, launch.attempt),
                    holds_result: true,
                    deleting: false,
                    exit: None,
                    guard_action: None,
                    memory_limit: launch.memory_limit,
                    resizes: 0,
                    ended: false,
                    waiting: None,
                }],
            });
        }
        if status.phase == Some(Phase::Succeeded) {
            break;
        }
        // A random running worker finishes (one in 50 fails once, like a flaky source).
        let running: Vec<usize> = (0..attempts.len())
            .filter(|i| attempts[*i].pods[0].exit.is_none())
            .collect();
        if running.is_empty() {
            continue;
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let index = running[(seed >> 33) as usize % running.len()];
        let attempt = &mut attempts[index];
        let fail = (seed >> 20).is_multiple_of(50) && attempt.attempt == 1;
        let range: RecordRange = attempt.range;
        let message = format!(
            r#"{{"records":{},"sums":{{"amount":1.5,"tax":0.25}},"outputs":["s3://bucket/run/part-{}.parquet"]}}"#,
            range.len(),
            range.start
        );
        attempt.pods[0].exit = Some(WorkerExit {
            exit_code: if fail { 1 } else { 0 },
            reason: if fail {
                "Error".into()
            } else {
                "Completed".into()
            },
            message: if fail {
                "connection reset by the source database".into()
            } else {
                message
            },
            finished_at: Some(now),
        });
        attempt.pods[0].ended = true;
        attempt.job.as_mut().unwrap().finished = Some(JobFinish {
            failed: fail,
            reason: String::new(),
            message: String::new(),
            at: Some(now),
        });
        // Retries are not delayed in this synthetic cluster.
        for pending in &mut status.pending {
            pending.not_before = None;
        }
    }
    assert_eq!(
        status.phase,
        Some(Phase::Succeeded),
        "synthetic run did not finish"
    );
    largest
}
