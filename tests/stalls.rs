//! Runs that cannot make progress say so, within minutes, instead of claiming to run: Jobs the
//! apiserver refuses, pods the cluster refuses to create for a Job, workers that cannot start,
//! and item lists a worker could never be given. Worker pods are kwok's (see tests/operator.rs).

mod support;

use std::time::Duration;

use batchguard::api::{BatchRun, Phase};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, ResourceQuota};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use support::*;

async fn create(api: &Api<BatchRun>, run: &BatchRun) {
    api.create(&PostParams::default(), run)
        .await
        .expect("BatchRun created");
}

fn condition(run: &BatchRun, type_: &str) -> Option<Condition> {
    run.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

/// Waits until the run's `Stalled` condition is True, and returns it.
async fn wait_stalled(runs: &Api<BatchRun>, name: &str, timeout: Duration) -> Condition {
    wait_for(&format!("run {name} Stalled=True"), timeout, || async {
        let run = runs.get(name).await.ok()?;
        condition(&run, "Stalled").filter(|c| c.status == "True")
    })
    .await
}

async fn quota(client: &kube::Client, namespace: &str, hard: serde_json::Value) {
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), namespace);
    let quota: ResourceQuota = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "limit"},
        "spec": {"hard": hard}
    }))
    .unwrap();
    quotas.create(&PostParams::default(), &quota).await.unwrap();
}

#[tokio::test]
async fn a_job_the_apiserver_rejects_fails_the_run_as_an_invalid_spec_with_its_words() {
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::new("invalid-job").await;
    // The schema accepts this template; the Job's validation does not (cpu request > limit).
    let run = batch_run(
        r#"
apiVersion: batchguard.dev/v1alpha1
kind: BatchRun
metadata: {name: cpu}
spec:
  input: {range: {start: 0, end: 30}, batchSize: 10}
  parallelism: 3
  template:
    spec:
      containers:
        - name: worker
          image: registry.example/etl:2
          resources: {requests: {cpu: "2"}, limits: {cpu: "1"}}
  resources: {memory: {request: 64Mi, limit: 128Mi}}
"#,
    );
    create(&runs, &run).await;
    let failed = wait_finished(&runs, "cpu", Duration::from_secs(60), &operator).await;
    let status = failed.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Failed));
    let stalled = condition(&failed, "Stalled").unwrap();
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(
        stalled
            .message
            .contains("must be less than or equal to cpu limit"),
        "the apiserver's own words: {}",
        stalled.message
    );
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        jobs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let event = wait_for("a RunFailed Event", Duration::from_secs(20), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("RunFailed"))
    })
    .await;
    assert!(event.message.unwrap_or_default().contains("cpu limit"));
    // No hot loop: the operator stays well under one Job creation attempt a second.
    let creates = operator
        .metrics()
        .await
        .lines()
        .find(|l| l.contains("verb=\"create\"") && l.contains("resource=\"jobs\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(creates < 10.0, "Job creations tried: {creates}");
}

#[tokio::test]
async fn a_quota_refusing_jobs_stalls_the_run_which_backs_off_and_finishes_when_room_frees() {
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::new("job-quota").await;
    // Room for one batch Job at a time; the run wants three.
    quota(
        &client,
        &ns.name,
        serde_json::json!({"count/jobs.batch": "1"}),
    )
    .await;
    create(
        &runs,
        &sim_run(
            "quota",
            30,
            10,
            3,
            r#"sim.batchguard.dev/duration: "4s""#,
            "",
        ),
    )
    .await;
    let stalled = wait_stalled(&runs, "quota", Duration::from_secs(30)).await;
    assert_eq!(stalled.reason, "JobRefused");
    assert!(
        stalled.message.contains("exceeded quota"),
        "{}",
        stalled.message
    );
    let run = runs.get("quota").await.unwrap();
    assert_eq!(
        run.status.as_ref().unwrap().phase,
        Some(Phase::Running),
        "a stalled run that has started is still running"
    );
    let done = wait_finished(&runs, "quota", Duration::from_secs(180), &operator).await;
    let status = done.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert_eq!(status.aggregate.records, 30);
    let stalled = condition(&runs.get("quota").await.unwrap(), "Stalled").unwrap();
    assert_eq!(
        stalled.status, "False",
        "no longer stalled once it finished"
    );
}

#[tokio::test]
async fn pods_the_cluster_refuses_stall_the_run_naming_the_job_and_the_reason() {
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::new("pod-quota").await;
    // Jobs may be created, their pods may not.
    quota(&client, &ns.name, serde_json::json!({"pods": "0"})).await;
    create(
        &runs,
        &sim_run("refused", 20, 10, 2, "", "  startTimeoutSeconds: 10"),
    )
    .await;
    let stalled = wait_stalled(&runs, "refused", Duration::from_secs(60)).await;
    assert_eq!(stalled.reason, "PodRefused", "{}", stalled.message);
    assert!(
        stalled.message.contains("cannot create its worker pod")
            && stalled.message.contains("exceeded quota"),
        "{}",
        stalled.message
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    wait_for(
        "a PodRefused Event on the run",
        Duration::from_secs(20),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("PodRefused")
                    && e.involved_object.kind.as_deref() == Some("BatchRun")
            })
        },
    )
    .await;
    // Room again: the Job controller creates the pods and the run completes.
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns.name);
    quotas
        .delete("limit", &DeleteParams::default())
        .await
        .unwrap();
    let done = wait_finished(&runs, "refused", Duration::from_secs(180), &operator).await;
    assert_eq!(done.status.unwrap().aggregate.records, 20);
}

#[tokio::test]
async fn a_worker_that_cannot_be_scheduled_stalls_the_run_after_its_start_timeout() {
    let Setup {
        client: _,
        ns: _ns,
        operator: _operator,
        runs,
    } = Setup::new("unschedulable").await;
    let mut run = sim_run("nowhere", 10, 10, 1, "", "  startTimeoutSeconds: 10");
    run.spec.template.spec.as_mut().unwrap().node_selector = Some(
        [(
            "batchguard.dev/no-such-node".to_string(),
            "true".to_string(),
        )]
        .into(),
    );
    create(&runs, &run).await;
    let stalled = wait_stalled(&runs, "nowhere", Duration::from_secs(60)).await;
    assert_eq!(stalled.reason, "WorkerCannotStart");
    assert!(
        stalled.message.contains("has not started since"),
        "{}",
        stalled.message
    );
    assert!(
        stalled.message.contains("Unschedulable"),
        "{}",
        stalled.message
    );
    assert!(
        stalled.message.contains("node affinity/selector"),
        "the scheduler's words: {}",
        stalled.message
    );
    let ready = condition(&runs.get("nowhere").await.unwrap(), "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "WorkerCannotStart")
    );
}

#[tokio::test]
async fn items_that_no_worker_could_be_given_fail_the_run_before_any_batch_starts() {
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::new("big-items").await;
    // The first two batches fit a worker's environment; the third (40 KB items) never would.
    let mut items: Vec<String> = (0..30).map(|i| format!("client-{i}")).collect();
    items[20] = "x".repeat(40_000);
    items[21] = "y".repeat(40_000);
    let mut run = sim_run("items", 1, 10, 3, "", "");
    run.spec.input.range = None;
    run.spec.input.items = Some(items);
    create(&runs, &run).await;
    let failed = wait_finished(&runs, "items", Duration::from_secs(60), &operator).await;
    let stalled = condition(&failed, "Stalled").unwrap();
    assert_eq!(stalled.reason, "InvalidSpec");
    assert!(
        stalled.message.contains("items 12-21 take")
            && stalled.message.contains("lower spec.input.batchSize"),
        "{}",
        stalled.message
    );
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let launched = jobs.list(&ListParams::default()).await.unwrap().items;
    assert!(
        launched.is_empty(),
        "no batch starts: {:?}",
        launched.iter().map(|j| j.name_any()).collect::<Vec<_>>()
    );
}
