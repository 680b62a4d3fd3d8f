//! The worker pods batchguard makes: restricted security defaults merged into whatever the
//! template sets (so a namespace enforcing the restricted Pod Security level admits them),
//! a failed attempt's Job and pod kept for `retention.failedSeconds` while succeeded ones go,
//! and pods whose worker ended stopped even when a sidecar would run on.

mod support;

use std::time::Duration;

use batchguard::api::{BatchRun, Phase};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use support::*;

async fn create(api: &Api<BatchRun>, run: &BatchRun) {
    api.create(&PostParams::default(), run)
        .await
        .expect("BatchRun created");
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

#[tokio::test]
async fn a_template_setting_only_fs_group_still_passes_the_restricted_pod_security_level() {
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::new("restricted").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let enforce = serde_json::json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest"}}});
    namespaces
        .patch(&ns.name, &PatchParams::default(), &Patch::Merge(&enforce))
        .await
        .unwrap();
    let mut run = sim_run("fsgroup", 30, 10, 3, "", "");
    let pod = run.spec.template.spec.as_mut().unwrap();
    pod.security_context =
        Some(serde_json::from_value(serde_json::json!({"fsGroup": 2000})).unwrap());
    create(&runs, &run).await;
    let done = wait_finished(&runs, "fsgroup", Duration::from_secs(90), &operator).await;
    let status = done.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert_eq!(status.aggregate.records, 30);
}

#[tokio::test]
async fn a_failed_attempt_keeps_its_job_and_pod_for_the_failed_retention_and_succeeded_ones_go() {
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::new("retention").await;
    // Batch 0-9 fails for good; 10-19 succeeds.
    let annotations = r#"sim.batchguard.dev/fail-ranges: "0", sim.batchguard.dev/fail-message: "source table locked""#;
    let extra = "  retry: {maxAttempts: 1}\n  retention: {succeededSeconds: 0, failedSeconds: 120}";
    create(&runs, &sim_run("keep", 20, 10, 2, annotations, extra)).await;
    let done = wait_finished(&runs, "keep", Duration::from_secs(90), &operator).await;
    assert_eq!(done.status.unwrap().phase, Some(Phase::Failed));
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // The succeeded batch's Job is removed once its result is counted.
    wait_for(
        "the succeeded Job removed",
        Duration::from_secs(30),
        || async {
            let list = jobs
                .list(&ListParams::default().labels("batchguard.dev/range-start=10"))
                .await
                .ok()?;
            list.items
                .iter()
                .all(|j| j.metadata.deletion_timestamp.is_some())
                .then_some(())
        },
    )
    .await;
    // Well past the moment a Job TTL of succeededSeconds would have removed the failed one.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let failed = ListParams::default().labels("batchguard.dev/range-start=0");
    let kept_jobs = jobs.list(&failed).await.unwrap().items;
    assert_eq!(kept_jobs.len(), 1, "the failed attempt's Job is kept");
    assert!(kept_jobs[0].metadata.deletion_timestamp.is_none());
    let kept_pods = pods.list(&failed).await.unwrap().items;
    assert_eq!(kept_pods.len(), 1, "and its pod");
    assert!(
        kept_pods[0].metadata.deletion_timestamp.is_none(),
        "not terminating: its logs stay readable"
    );
    let ttl = kept_jobs[0]
        .spec
        .as_ref()
        .unwrap()
        .ttl_seconds_after_finished;
    assert_eq!(
        ttl,
        Some(120),
        "the Job's TTL is only the backstop for the retention"
    );
}

#[tokio::test]
async fn a_pod_whose_worker_ended_is_stopped_even_with_a_sidecar_that_never_exits() {
    let node = RealNode::from_env();
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::new("sidecar").await;
    let worker = r#"
import json, os
start, end = int(os.environ["BATCHGUARD_RANGE_START"]), int(os.environ["BATCHGUARD_RANGE_END"])
with open("/dev/termination-log", "w") as f:
    json.dump({"records": end - start, "sums": {"total": sum(range(start, end))}}, f)
"#;
    let mut run = python_run(&node, "sidecar", (30, 10, 3), ("96Mi", "96Mi"), worker, "");
    // Kept so the sidecar would outlive the worker if nothing stopped the pod.
    run.spec.retention.succeeded_seconds = 600;
    let sidecar = serde_json::json!({
        "name": "log-shipper",
        "image": node.worker_image,
        "imagePullPolicy": "Never",
        "command": ["python3", "-c", "import time; time.sleep(100000)"],
        "resources": {"limits": {"memory": "32Mi"}}
    });
    let pod = run.spec.template.spec.as_mut().unwrap();
    pod.containers
        .push(serde_json::from_value(sidecar).unwrap());
    create(&runs, &run).await;
    let done = wait_finished(&runs, "sidecar", Duration::from_secs(180), &operator).await;
    let status = done.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert_eq!(status.aggregate.records, 30);
    assert_eq!(
        status.aggregate.sums.get("total"),
        Some(&sum_of_offsets(30))
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let still = wait_for(
        "no worker pod left running",
        Duration::from_secs(60),
        || async {
            let list = pods.list(&ListParams::default()).await.ok()?;
            let running: Vec<String> = list
                .items
                .iter()
                .filter(|p| phase(p) == "Running" && p.metadata.deletion_timestamp.is_none())
                .map(|p| p.name_any())
                .collect();
            running.is_empty().then_some(list.items.len())
        },
    )
    .await;
    assert!(still <= 3, "one pod per batch at most");
}
