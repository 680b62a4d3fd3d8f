//! Finalizers never strand objects: once the operator is gone, `batchguard release-finalizers`
//! frees the runs and worker pods that hold batchguard's finalizers, so deleting them finishes;
//! and the tests' own namespaces, runs inside, are gone for good after teardown.

mod support;

use std::process::Command;
use std::time::Duration;

use batchguard::api::BatchRun;
use batchguard::api::labels::{CLEANUP_FINALIZER, RESULT_FINALIZER, RUN};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use support::*;

/// A run whose workers (kwok pods) run for five minutes: it and its pods hold the finalizers
/// for the whole test.
async fn held_run(client: &Client, runs: &Api<BatchRun>, namespace: &str, name: &str) {
    runs.create(
        &PostParams::default(),
        &sim_run(
            name,
            400,
            100,
            2,
            r#"sim.batchguard.dev/duration: "5m""#,
            "",
        ),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{RUN}={name}");
    wait_for(
        "the run and its worker pods to hold batchguard's finalizers",
        Duration::from_secs(60),
        || async {
            let run = runs.get(name).await.ok()?;
            let held = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?
                .items
                .iter()
                .filter(|p| p.finalizers().iter().any(|f| f == RESULT_FINALIZER))
                .count();
            (run.finalizers().iter().any(|f| f == CLEANUP_FINALIZER) && held == 2).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn release_finalizers_lets_runs_and_pods_go_once_the_operator_is_gone() {
    let Setup {
        client,
        ns,
        mut operator,
        runs,
    } = Setup::new("release").await;
    held_run(&client, &runs, &ns.name, "held").await;
    operator.kill();

    // Without an operator, a deleted run waits for ever.
    runs.delete("held", &DeleteParams::background())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stuck = runs
        .get("held")
        .await
        .expect("the run waits for its cleanup");
    assert!(stuck.metadata.deletion_timestamp.is_some());

    let out = Command::new(env!("CARGO_BIN_EXE_batchguard"))
        .args(["release-finalizers", "--namespace", &ns.name])
        .env("RUST_LOG", "info")
        .output()
        .expect("the operator binary runs");
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "release-finalizers failed:\n{log}");
    assert!(log.contains("released finalizers"), "{log}");

    wait_for("the run to be gone", Duration::from_secs(30), || async {
        runs.get_opt("held").await.ok()?.is_none().then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let holding: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| {
            p.finalizers()
                .iter()
                .any(|f| f.starts_with("batchguard.dev/"))
        })
        .map(|p| p.name_any())
        .collect();
    assert!(
        holding.is_empty(),
        "pods still hold finalizers: {holding:?}"
    );
}

#[tokio::test]
async fn a_test_namespace_with_a_run_is_gone_after_teardown() {
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::new("teardown").await;
    held_run(&client, &runs, &ns.name, "held").await;
    let name = ns.name.clone();
    // The order of every test's teardown: the operator stops, then the namespace goes.
    drop(operator);
    drop(ns);
    wait_namespace_gone(&client, &name, Duration::from_secs(90)).await;
}
