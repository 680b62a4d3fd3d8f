//! The local cluster itself: Jobs run and end the way the sim annotations say, simulated
//! memory reaches Prometheus, and namespaces really go away (the controller-manager works).

mod support;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use prometheus_http_query::Client as Prometheus;
use support::*;

fn job(name: &str, annotations: serde_json::Value) -> Job {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"annotations": annotations},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "worker", "image": "sim/worker:1"}]}
        }}
    }))
    .unwrap()
}

async fn pod_of(pods: &Api<Pod>, job: &str) -> Option<Pod> {
    pods.list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .ok()?
        .items
        .into_iter()
        .next()
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn terminated(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .clone()
}

#[tokio::test]
async fn a_job_pod_runs_then_succeeds_with_the_chosen_message() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "smoke-job").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let message = r#"{"records":5}"#;
    let annotations = serde_json::json!({"sim.batchguard.dev/duration": "3s", "sim.batchguard.dev/message": message});
    jobs.create(&PostParams::default(), &job("ok", annotations))
        .await
        .unwrap();

    wait_for("the pod to run", Duration::from_secs(60), || async {
        (phase(&pod_of(&pods, "ok").await?) == "Running").then_some(())
    })
    .await;
    let pod = wait_for("the pod to succeed", Duration::from_secs(60), || async {
        let pod = pod_of(&pods, "ok").await?;
        (phase(&pod) == "Succeeded").then_some(pod)
    })
    .await;
    let end = terminated(&pod).expect("a terminated container");
    assert_eq!((end.exit_code, end.message.as_deref()), (0, Some(message)));
    wait_for("the Job to complete", Duration::from_secs(60), || async {
        let job = jobs.get("ok").await.ok()?;
        job.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_job_pod_can_be_oom_killed_and_a_deleted_pod_reports_its_checkpoint() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "smoke-fail").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let oom = serde_json::json!({"sim.batchguard.dev/fail-all": "true", "sim.batchguard.dev/reason": "OOMKilled", "sim.batchguard.dev/exit-code": "137"});
    jobs.create(&PostParams::default(), &job("oom", oom))
        .await
        .unwrap();
    let pod = wait_for(
        "the pod to be OOM-killed",
        Duration::from_secs(60),
        || async {
            let pod = pod_of(&pods, "oom").await?;
            (phase(&pod) == "Failed").then_some(pod)
        },
    )
    .await;
    let end = terminated(&pod).unwrap();
    assert_eq!(
        (end.exit_code, end.reason.as_deref()),
        (137, Some("OOMKilled"))
    );

    // A running worker holding a finalizer is deleted: it ends after its grace period.
    let mut slow = job(
        "slow",
        serde_json::json!({"sim.batchguard.dev/duration": "10m", "sim.batchguard.dev/resume-after": "7"}),
    );
    let template = &mut slow.spec.as_mut().unwrap().template;
    let meta = template.metadata.as_mut().unwrap();
    meta.finalizers = Some(vec!["batchguard.dev/result".into()]);
    meta.labels = Some(
        [
            ("batchguard.dev/range-start".to_string(), "100".to_string()),
            ("batchguard.dev/range-end".to_string(), "200".to_string()),
        ]
        .into(),
    );
    jobs.create(&PostParams::default(), &slow).await.unwrap();
    let pod = wait_for("the slow pod to run", Duration::from_secs(60), || async {
        let pod = pod_of(&pods, "slow").await?;
        (phase(&pod) == "Running").then_some(pod)
    })
    .await;
    let name = pod.metadata.name.clone().unwrap();
    let started = std::time::Instant::now();
    pods.delete(
        &name,
        &DeleteParams {
            grace_period_seconds: Some(3),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let pod = wait_for(
        "the deleted pod to end",
        Duration::from_secs(60),
        || async {
            let pod = pods.get(&name).await.ok()?;
            (phase(&pod) == "Failed").then_some(pod)
        },
    )
    .await;
    // deletionTimestamp has whole seconds, so the grace of 3s ends 2 to 3s after the request.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "ended only after its grace period: {:?}",
        started.elapsed()
    );
    let end = terminated(&pod).unwrap();
    assert_eq!(end.exit_code, 143);
    let message: serde_json::Value = serde_json::from_str(end.message.as_deref().unwrap()).unwrap();
    assert_eq!(message["resumeFrom"], 107);
    assert_eq!(message["records"], 7);
    // The finalizer holds the pod until it is released, as the operator does: only our entry
    // goes, the Job controller's own finalizer is left to it.
    let pod = pods.get(&name).await.unwrap();
    let index = pod
        .metadata
        .finalizers
        .iter()
        .flatten()
        .position(|f| f == "batchguard.dev/result")
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": "batchguard.dev/result"},
        {"op": "remove", "path": format!("/metadata/finalizers/{index}")},
    ]))
    .unwrap();
    pods.patch(
        &name,
        &Default::default(),
        &kube::api::Patch::<()>::Json(patch),
    )
    .await
    .unwrap();
    wait_for(
        "the released pod to go away",
        Duration::from_secs(60),
        || async { pods.get_opt(&name).await.ok()?.is_none().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn simulated_memory_reaches_prometheus() {
    let client = client().await;
    let url = std::env::var("PROMETHEUS_URL").expect("PROMETHEUS_URL from tests/cluster/up");
    let ns = TestNamespace::new(&client, "smoke-memory").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let fixed = serde_json::json!({"sim.batchguard.dev/duration": "5m", "sim.batchguard.dev/memory": "300Mi"});
    jobs.create(&PostParams::default(), &job("fixed", fixed))
        .await
        .unwrap();
    let growing = serde_json::json!({"sim.batchguard.dev/duration": "5m", "sim.batchguard.dev/memory-growth": "10Mi"});
    jobs.create(&PostParams::default(), &job("growing", growing))
        .await
        .unwrap();

    let prometheus = Prometheus::try_from(url.as_str()).unwrap();
    let query = format!(
        r#"max by (pod) (container_memory_working_set_bytes{{namespace="{}",container="worker"}})"#,
        ns.name
    );
    let values = |prometheus: Prometheus, query: String| async move {
        let result = prometheus.query(query).get().await.ok()?;
        let vector = result.data().as_vector()?.to_vec();
        let fixed = vector
            .iter()
            .find(|v| v.metric()["pod"].starts_with("fixed-"))?
            .sample()
            .value();
        let growing = vector
            .iter()
            .find(|v| v.metric()["pod"].starts_with("growing-"))?
            .sample()
            .value();
        Some((fixed, growing))
    };
    let (fixed, first) = wait_for(
        "memory samples in Prometheus",
        Duration::from_secs(60),
        || values(prometheus.clone(), query.clone()),
    )
    .await;
    assert_eq!(fixed, 300.0 * 1024.0 * 1024.0);
    let (_, later) = wait_for("memory to grow", Duration::from_secs(30), || async {
        let (f, g) = values(prometheus.clone(), query.clone()).await?;
        (g > first).then_some((f, g))
    })
    .await;
    assert!(
        later > first,
        "the growing pod's memory rises: {first} → {later}"
    );
}

#[tokio::test]
async fn a_deleted_namespace_really_goes_away() {
    let client = client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = TestNamespace::new(&client, "smoke-gone").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    jobs.create(
        &PostParams::default(),
        &job(
            "leftover",
            serde_json::json!({"sim.batchguard.dev/duration": "2s"}),
        ),
    )
    .await
    .unwrap();
    let name = ns.name.clone();
    drop(ns);
    wait_for(
        "the namespace to be removed",
        Duration::from_secs(120),
        || async {
            namespaces
                .get_opt(&name)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn the_apiserver_reports_the_built_version() {
    let client = client().await;
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.git_version, "v1.37.2");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "37")
    );
}
