//! `kubectl batchguard` against real runs on the local cluster: `watch` followed to the end of
//! a run with a drain, exit codes for success and failure, `status`, `results`, `logs
//! --failed`, `retry --failed`, and the errors for an unknown run and no access (a missing
//! CRD is a unit test of src/cli/client.rs: deleting the CRD here would delete every run).
//!
//! Workers follow the `sim.batchguard.dev/*` convention of tests/cluster/README.md.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use batchguard::api::{BatchRun, Phase};
use kube::api::{Patch, PatchParams, PostParams};
use support::*;

fn sim_run_400(name: &str, annotations: &str, extra: &str) -> BatchRun {
    sim_run(name, 400, 200, 2, annotations, extra)
}

/// Runs the plugin in the test's namespace, its output captured (so without a terminal).
fn plugin(namespace: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-batchguard"))
        .args(["-n", namespace])
        .args(args)
        .output()
        .expect("the plugin runs")
}

fn text(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `watch` on a blocking thread, so the test's runtime goes on while it follows the run.
async fn watch(namespace: &str, run: &str) -> Output {
    let (namespace, run) = (namespace.to_string(), run.to_string());
    tokio::task::spawn_blocking(move || plugin(&namespace, &["watch", &run]))
        .await
        .unwrap()
}

#[tokio::test]
async fn watch_follows_a_drained_run_to_success_and_the_views_agree_with_the_status() {
    let setup = Setup::new("cli-watch").await;
    let ns = setup.ns.name.clone();
    // First attempts grow 20Mi/s and are drained near 85% of 128Mi; they checkpoint 50
    // records and continue in a new Job.
    let annotations = r#"sim.batchguard.dev/duration: "12s", sim.batchguard.dev/memory-growth: "20Mi", sim.batchguard.dev/memory-attempts: "1", sim.batchguard.dev/resume-after: "50""#;
    let guard = "  memoryGuard: {threshold: 85, action: Drain, drainGracePeriodSeconds: 2, onPressure: Resume}";
    setup
        .runs
        .create(
            &PostParams::default(),
            &sim_run_400("etl", annotations, guard),
        )
        .await
        .unwrap();
    let (code, stdout, stderr) = text(&watch(&ns, "etl").await);
    println!("{stdout}");
    assert_eq!(code, 0, "watch exits 0 on success: {stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Running ") && l.contains("/400 records (")),
        "plain progress lines without a terminal: {stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("workers: etl-") && l.contains("(threshold 85%)")),
        "running workers are listed: {stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("event ") && l.contains("Drained")),
        "the drain shows as it happens: {stdout}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("Succeeded: all 400 records done"),
        "{stdout}"
    );

    let run = setup.runs.get("etl").await.unwrap();
    let status = run.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded));

    let (code, table, _) = text(&plugin(&ns, &["status"]));
    assert_eq!(code, 0);
    let row = table
        .lines()
        .find(|l| l.starts_with("etl "))
        .expect("a row for the run");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "Succeeded", "{table}");
    assert_eq!(cells[2], "400/400", "{table}");
    assert_eq!(
        cells[5],
        status.guard.drains.to_string(),
        "DRAINS column: {table}"
    );

    let (code, detail, _) = text(&plugin(&ns, &["status", "etl"]));
    assert_eq!(code, 0);
    assert!(detail.contains("Phase:        Succeeded"), "{detail}");
    assert!(
        detail.contains(&format!("{} drains", status.guard.drains)),
        "{detail}"
    );

    let (code, json, _) = text(&plugin(&ns, &["results", "etl", "-o", "json"]));
    assert_eq!(code, 0);
    let results: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(results["aggregate"]["records"], status.aggregate.records);
    assert_eq!(results["completed"], "0-399");
    assert_eq!(
        results["aggregate"]["outputs"]["count"],
        status.aggregate.outputs.count
    );
    let (code, yaml, _) = text(&plugin(&ns, &["results", "etl", "-o", "yaml"]));
    assert_eq!(code, 0);
    let results: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(results["phase"], "Succeeded");
}

#[tokio::test]
async fn a_failed_run_exits_1_shows_its_failures_and_retries_to_success() {
    let setup = Setup::new("cli-retry").await;
    let ns = setup.ns.name.clone();
    // Records 200-399 fail on their first attempt; with one attempt allowed the run fails.
    let annotations = r#"sim.batchguard.dev/duration: "1s", sim.batchguard.dev/fail-ranges: "200", sim.batchguard.dev/fail-attempts: "1", sim.batchguard.dev/fail-message: "row 250: bad date""#;
    let retry = "  retry: {maxAttempts: 1, backoff: {baseSeconds: 0, maxSeconds: 0}}";
    setup
        .runs
        .create(
            &PostParams::default(),
            &sim_run_400("ledger", annotations, retry),
        )
        .await
        .unwrap();
    let (code, stdout, _) = text(&watch(&ns, "ledger").await);
    assert_eq!(code, 1, "watch exits 1 when the run fails: {stdout}");
    assert!(
        stdout.lines().last().unwrap().starts_with("Failed: "),
        "{stdout}"
    );
    assert!(
        stdout.contains("BatchFailed"),
        "the failure shows as an event: {stdout}"
    );

    let (code, results, _) = text(&plugin(&ns, &["results", "ledger"]));
    assert_eq!(code, 0);
    assert!(results.contains("Failed:    200-399"), "{results}");
    assert!(results.contains("row 250: bad date"), "{results}");

    let (code, logs, stderr) = text(&plugin(&ns, &["logs", "ledger", "--failed"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        logs.contains("==> pod ledger-200-a1-")
            && logs.contains("(records 200-399, attempt 1): exit code 1"),
        "{logs}"
    );

    // Suspended while the retry is asked and the watch starts, so that the watch sees the
    // run in progress rather than already done.
    let suspend = |on: bool| {
        let patch = serde_json::json!({"spec": {"suspend": on}});
        let runs = setup.runs.clone();
        async move {
            runs.patch("ledger", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    suspend(true).await;
    let (code, said, stderr) = text(&plugin(&ns, &["retry", "ledger", "--failed"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        said.contains("Retry requested for records 200-399"),
        "{said}"
    );
    wait_for(
        "the retry to be taken up",
        Duration::from_secs(30),
        || async {
            let phase = setup.runs.get("ledger").await.ok()?.status?.phase?;
            (phase == Phase::Suspended).then_some(())
        },
    )
    .await;
    // This time on a terminal (util-linux `script` gives it one): the progress bar.
    let command = format!(
        "{} -n {ns} watch ledger",
        env!("CARGO_BIN_EXE_kubectl-batchguard")
    );
    let watching = tokio::task::spawn_blocking(move || {
        Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .output()
            .expect("script runs")
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    suspend(false).await;
    let on_terminal = watching.await.unwrap();
    let (code, stdout, _) = text(&on_terminal);
    assert_eq!(code, 0, "the retried run succeeds: {stdout}");
    assert!(
        stdout.contains("/400 records") && stdout.contains('\u{1b}'),
        "a drawn progress bar: {stdout}"
    );
    assert!(stdout.contains("RetryRequested"), "{stdout}");
    let run = setup.runs.get("ledger").await.unwrap();
    let status = run.status.unwrap();
    assert_eq!(status.aggregate.records, 400, "every record counted once");
    assert_eq!(status.completed, "0-399");
    assert!(status.failed.is_empty());
    let token = status
        .retried_failed
        .clone()
        .expect("the request is recorded");

    // Nothing left to retry: nothing changes.
    let (code, said, _) = text(&plugin(&ns, &["retry", "ledger", "--failed"]));
    assert_eq!(code, 0);
    assert!(said.contains("Nothing to retry"), "{said}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = setup.runs.get("ledger").await.unwrap().status.unwrap();
    assert_eq!(after.retried_failed, Some(token));
    assert_eq!(after.aggregate.records, 400);
    assert_eq!(after.phase, Some(Phase::Succeeded));
}

#[tokio::test]
async fn errors_say_what_is_wrong_and_exit_2() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "cli-errors").await;

    let (code, _, stderr) = text(&plugin(&ns.name, &["status", "nope"]));
    assert_eq!(code, 2);
    assert!(
        stderr.contains(&format!("no BatchRun nope in namespace {}", ns.name)),
        "{stderr}"
    );

    // A ServiceAccount without any role.
    let (ok, _, err) = kubectl(
        &["create", "serviceaccount", "nobody", "-n", &ns.name],
        None,
    );
    assert!(ok, "{err}");
    let (ok, token, err) = kubectl(&["create", "token", "nobody", "-n", &ns.name], None);
    assert!(ok, "{err}");
    let kubeconfig =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-nobody.kubeconfig");
    service_account_kubeconfig(token.trim(), &kubeconfig);
    let (code, _, stderr) = text(&plugin(
        &ns.name,
        &["--kubeconfig", kubeconfig.to_str().unwrap(), "status"],
    ));
    assert_eq!(code, 2);
    assert!(stderr.contains("access denied"), "{stderr}");
}
