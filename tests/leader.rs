//! Two replicas with leader election: only the Lease holder reconciles, and when it is
//! SIGKILLed the standby takes over and finishes the run with the exact aggregate.

mod support;

use std::time::Duration;

use batchguard::api::{BatchRun, Phase};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;
use support::*;

fn reconciles(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("batchguard_reconciles_total "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "leader").await;
    let replica = |name: &str| {
        Operator::start_with_env(
            &ns.name,
            &[
                ("BATCHGUARD_LEADER_ELECTION", "true"),
                ("POD_NAMESPACE", &ns.name),
                ("POD_NAME", name),
            ],
        )
    };
    let mut first = replica("replica-a");
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let leader = wait_for(
        "replica-a to take the lease",
        Duration::from_secs(30),
        || async {
            let lease = leases.get_opt("batchguard-leader").await.ok()??;
            lease.spec?.holder_identity.filter(|h| h == "replica-a")
        },
    )
    .await;
    assert_eq!(leader, "replica-a");
    let second = replica("replica-b");

    let runs: Api<BatchRun> = Api::namespaced(client.clone(), &ns.name);
    let run = batch_run(
        r#"
apiVersion: batchguard.dev/v1alpha1
kind: BatchRun
metadata: {name: handover}
spec:
  input: {range: {start: 0, end: 1000}, batchSize: 100}
  parallelism: 2
  template:
    metadata: {annotations: {sim.batchguard.dev/duration: "3s"}}
    spec: {containers: [{name: worker, image: registry.example/w:1}]}
  resources: {memory: {request: 64Mi, limit: 128Mi}}
"#,
    );
    runs.create(&PostParams::default(), &run).await.unwrap();
    wait_for(
        "the leader to make progress",
        Duration::from_secs(60),
        || async {
            let status = runs.get("handover").await.ok()?.status?;
            (status.aggregate.records >= 200).then_some(())
        },
    )
    .await;
    assert!(
        reconciles(&first.metrics().await) > 0,
        "the leader reconciles"
    );
    assert_eq!(
        reconciles(&second.metrics().await),
        0,
        "the standby does nothing"
    );

    first.kill();
    wait_for(
        "replica-b to take the lease",
        Duration::from_secs(60),
        || async {
            let lease = leases.get_opt("batchguard-leader").await.ok()??;
            lease
                .spec?
                .holder_identity
                .filter(|h| h == "replica-b")
                .map(|_| ())
        },
    )
    .await;
    let run = wait_finished(&runs, "handover", Duration::from_secs(120), &second).await;
    let status = run.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    assert_eq!(status.aggregate.records, 1000);
    assert_eq!(status.aggregate.outputs.count, 10);
    assert!(
        reconciles(&second.metrics().await) > 0,
        "the new leader reconciles"
    );
}
