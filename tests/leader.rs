//! Two replicas with leader election: only the Lease holder reconciles, the standby is Ready
//! (or no rolling update could finish), when the leader is SIGKILLed the standby takes over
//! and finishes the run with the exact aggregate, and a leader that stops releases the Lease.

mod support;

use std::time::Duration;

use batchguard::api::{BatchRun, Phase};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;
use support::*;

/// The value of the `batchguard_leading` gauge: 1 while the process reconciles.
fn leading(metrics: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("batchguard_leading "))
        .and_then(|v| v.trim().parse().ok())
}

async fn ready(operator: &Operator) -> bool {
    http_get(&operator.admin, "/readyz").await.as_deref() == Some("ready")
}

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
    // The standby is Ready while it waits: a rolling update needs it to be.
    wait_for(
        "the standby to be Ready",
        Duration::from_secs(30),
        || async { ready(&second).await.then_some(()) },
    )
    .await;
    assert!(ready(&first).await, "the leader is Ready");
    assert_eq!(leading(&first.metrics().await), Some(1));
    assert_eq!(leading(&second.metrics().await), Some(0));

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

#[tokio::test]
async fn a_stopping_leader_releases_the_lease_to_a_standby() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "handover").await;
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
    let first = replica("replica-a");
    wait_for("replica-a to lead", Duration::from_secs(30), || async {
        (leading(&first.metrics().await)? == 1).then_some(())
    })
    .await;
    let second = replica("replica-b");
    wait_for("replica-b to stand by", Duration::from_secs(30), || async {
        ready(&second).await.then_some(())
    })
    .await;

    // SIGTERM, as the kubelet stops a pod in a rollout: the leader stops reconciling, then
    // releases the Lease. The standby looks again when the lease it saw would have expired
    // (kube-lease-manager sleeps until then), so it leads within the lease time.
    let stopped = std::time::Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &first.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for(
        "replica-b to lead within the lease time",
        Duration::from_secs(25),
        || async { (leading(&second.metrics().await)? == 1).then_some(()) },
    )
    .await;
    let log = std::fs::read_to_string(&first.log).unwrap_or_default();
    assert!(
        log.contains("released the lease"),
        "the old leader said it released the Lease:\n{}",
        first.log_tail()
    );
    eprintln!("handed over in {:?}", stopped.elapsed());
}
