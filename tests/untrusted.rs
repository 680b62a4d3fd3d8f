//! What workers report is untrusted input: a result that claims more records than its batch,
//! a sum that would overflow, a worker stopped mid-batch that reports a short count without
//! saying where to resume, and a pod forged with a run's labels can neither inflate nor
//! drop a record of the aggregate. kwok plays the workers, except for the stopped one, which
//! runs on the real node.

mod support;

use std::time::Duration;

use batchguard::api::{BatchRun, Phase};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use support::*;

async fn create(api: &Api<BatchRun>, run: &BatchRun) {
    api.create(&PostParams::default(), run)
        .await
        .expect("BatchRun created");
}

const FAST_RETRY: &str = "  retry: {maxAttempts: 2, backoff: {baseSeconds: 1, maxSeconds: 1}}";

#[tokio::test]
async fn a_worker_claiming_more_records_than_its_batch_is_never_counted() {
    let Setup {
        client: _,
        ns: _ns,
        operator,
        runs,
    } = Setup::new("inflated").await;
    let claims = r#"sim.batchguard.dev/message: '{"records": 1000, "sums": {"pay": 1}}'"#;
    create(&runs, &sim_run("inflated", 30, 10, 3, claims, FAST_RETRY)).await;
    let run = wait_finished(&runs, "inflated", Duration::from_secs(90), &operator).await;
    let status = run.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Failed), "{status:#?}");
    assert_eq!(
        status.aggregate.records, 0,
        "nothing inflated the aggregate"
    );
    assert!(status.aggregate.sums.is_empty());
    let failure = status.failures.last().unwrap();
    assert_eq!(failure.reason.as_str(), "BadOutput");
    assert!(
        failure
            .message
            .contains("records 1000 is more than the 10 records"),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn a_sum_that_would_overflow_fails_its_batch_and_keeps_the_total_finite() {
    let Setup {
        client: _,
        ns: _ns,
        operator,
        runs,
    } = Setup::new("overflow").await;
    // Each batch alone is finite; the second one added would leave the finite numbers.
    let huge = r#"sim.batchguard.dev/message: '{"records": 10, "sums": {"pay": 1.5e308}}'"#;
    create(&runs, &sim_run("overflow", 20, 10, 1, huge, FAST_RETRY)).await;
    let run = wait_finished(&runs, "overflow", Duration::from_secs(90), &operator).await;
    let status = run.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Failed), "{status:#?}");
    assert_eq!(status.aggregate.sums.get("pay"), Some(&1.5e308));
    assert_eq!(
        status.aggregate.records, 10,
        "the first batch stays counted"
    );
    assert_eq!(status.completed, "0-9");
    assert_eq!(status.failed, "10-19");
    let failure = status.failures.last().unwrap();
    assert_eq!(failure.reason.as_str(), "BadOutput");
    assert!(
        failure
            .message
            .contains("sum \"pay\" would leave the finite numbers"),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn a_pod_forged_with_a_runs_labels_is_ignored_and_released() {
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::new("forged").await;
    // One batch at a time, so the forged pod's range (40-49) is long unlaunched when it ends.
    create(
        &runs,
        &sim_run(
            "honest",
            50,
            10,
            1,
            r#"sim.batchguard.dev/duration: "2s""#,
            "",
        ),
    )
    .await;
    let uid = wait_for("the run's uid", Duration::from_secs(10), || async {
        runs.get("honest").await.ok()?.uid()
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let forged: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "forged",
            "labels": {
                "app.kubernetes.io/managed-by": "batchguard",
                "batchguard.dev/run": "honest",
                "batchguard.dev/run-uid": uid,
                "batchguard.dev/range-start": "40",
                "batchguard.dev/range-end": "50",
                "batchguard.dev/attempt": "1"
            },
            "annotations": {
                "sim.batchguard.dev/message": r#"{"records": 10, "sums": {"records": 999}}"#
            },
            "finalizers": ["batchguard.dev/result"]
        },
        "spec": {"containers": [{"name": "worker", "image": "registry.example/etl:2"}], "restartPolicy": "Never"}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &forged).await.unwrap();
    let run = wait_finished(&runs, "honest", Duration::from_secs(120), &operator).await;
    let status = run.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert_eq!(
        status.aggregate.sums.get("records"),
        Some(&50.0),
        "only the run's own workers are counted"
    );
    assert_eq!(status.aggregate.records, 50);
    assert_eq!(status.batches.succeeded, 5, "batch 40-49 ran as a real Job");
    let released = wait_for(
        "the forged pod's finalizer released",
        Duration::from_secs(30),
        || async {
            let pod = pods.get("forged").await.ok()?;
            pod.finalizers().is_empty().then_some(pod)
        },
    )
    .await;
    assert!(released.finalizers().is_empty());
}

/// A worker that knows nothing of checkpoints: on SIGTERM it reports what it did so far
/// (without `resumeFrom`) and exits 0, as a naive `atexit` handler would.
const NAIVE_WORKER: &str = r#"
import json, os, signal, sys, time
start, end = int(os.environ["BATCHGUARD_RANGE_START"]), int(os.environ["BATCHGUARD_RANGE_END"])
done, total = 0, 0
def report(*_):
    with open("/dev/termination-log", "w") as f:
        json.dump({"records": done, "sums": {"total": total}}, f)
    sys.exit(0)
signal.signal(signal.SIGTERM, report)
for offset in range(start, end):
    time.sleep(0.2)
    done, total = done + 1, total + offset
report()
"#;

#[tokio::test]
async fn a_deleted_worker_reporting_a_short_count_without_a_resume_point_runs_again_whole() {
    let node = RealNode::from_env();
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::new("naive-stop").await;
    let run = python_run(
        &node,
        "naive",
        (40, 40, 1),
        ("128Mi", "128Mi"),
        NAIVE_WORKER,
        "  retry: {backoff: {baseSeconds: 1, maxSeconds: 1}}",
    );
    create(&runs, &run).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // Once the first worker has done a few records, delete its pod as a user would.
    let first = wait_for(
        "the first worker running",
        Duration::from_secs(90),
        || async {
            let list = pods
                .list(&ListParams::default().labels("batchguard.dev/attempt=1"))
                .await
                .ok()?;
            list.items
                .into_iter()
                .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    pods.delete(&first.name_any(), &DeleteParams::default())
        .await
        .unwrap();
    let run = wait_finished(&runs, "naive", Duration::from_secs(180), &operator).await;
    let status = run.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert_eq!(
        status.aggregate.records, 40,
        "every record counted once: {status:#?}"
    );
    assert_eq!(
        status.aggregate.sums.get("total"),
        Some(&sum_of_offsets(40))
    );
    let refused = status
        .failures
        .iter()
        .find(|f| f.reason.as_str() == "BadOutput")
        .expect("the short report was refused");
    assert!(
        refused.message.contains("must say where to resume"),
        "{}",
        refused.message
    );
}
