//! The operator against the real local cluster: Jobs per batch, the parallelism cap, retries,
//! exactly-once aggregation across SIGKILLs, suspend and deletion.
//!
//! Worker pods are played by kwok following the `sim.batchguard.dev/*` annotation convention
//! of tests/cluster/README.md: by default a worker runs for `duration` and reports
//! `{"records": <range size>, "sums": {"records": <range size>}, "outputs": ["sim://<pod>"]}`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batchguard::api::{BatchRun, Phase};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use support::*;

async fn create(api: &Api<BatchRun>, run: &BatchRun) {
    api.create(&PostParams::default(), run)
        .await
        .expect("BatchRun created");
}

/// Samples, from the API, how many of the namespace's batch Jobs and worker pods are alive.
fn sample_alive(
    client: &Client,
    namespace: &str,
) -> (Arc<Mutex<(usize, usize)>>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(Mutex::new((0usize, 0usize)));
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let seen = peak.clone();
    let task = tokio::spawn(async move {
        loop {
            let lp = ListParams::default().labels("app.kubernetes.io/managed-by=batchguard");
            if let (Ok(jobs), Ok(pods)) = (jobs.list(&lp).await, pods.list(&lp).await) {
                let running = |p: &Pod| {
                    matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Pending" | "Running") | None
                    )
                };
                let live_pods = pods.iter().filter(|p| running(p)).count();
                // A Job is alive until its worker ended: not finished, and its pod (if any) running.
                let live_jobs = jobs
                    .iter()
                    .filter(|j| j.metadata.deletion_timestamp.is_none())
                    .filter(|j| {
                        !j.status
                            .iter()
                            .flat_map(|s| s.conditions.iter().flatten())
                            .any(|c| {
                                c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed")
                            })
                    })
                    .filter(|j| {
                        let own: Vec<&Pod> = pods
                            .iter()
                            .filter(|p| p.labels().get("job-name") == j.metadata.name.as_ref())
                            .collect();
                        own.is_empty() || own.iter().any(|p| running(p))
                    })
                    .count();
                let mut peak = seen.lock().unwrap();
                peak.0 = peak.0.max(live_jobs);
                peak.1 = peak.1.max(live_pods);
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    (peak, task)
}

/// Job UIDs seen per "range/attempt".
type JobsSeen = Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>;

/// Records every Job UID ever created per (range, attempt).
fn record_jobs(client: &Client, namespace: &str) -> (JobsSeen, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(BTreeMap::<String, BTreeSet<String>>::new()));
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let record = seen.clone();
    let task = tokio::spawn(async move {
        let mut events = watcher(jobs, watcher::Config::default()).boxed();
        while let Some(Ok(event)) = events.next().await {
            let objects: Vec<Job> = match event {
                watcher::Event::Apply(job) | watcher::Event::InitApply(job) => vec![job],
                _ => vec![],
            };
            for job in objects {
                let labels = job.labels();
                let key = format!(
                    "{}-{}/a{}",
                    labels
                        .get("batchguard.dev/range-start")
                        .cloned()
                        .unwrap_or_default(),
                    labels
                        .get("batchguard.dev/range-end")
                        .cloned()
                        .unwrap_or_default(),
                    labels
                        .get("batchguard.dev/attempt")
                        .cloned()
                        .unwrap_or_default()
                );
                record
                    .lock()
                    .unwrap()
                    .entry(key)
                    .or_default()
                    .insert(job.uid().unwrap_or_default());
            }
        }
    });
    (seen, task)
}

fn condition<'a>(
    run: &'a BatchRun,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    run.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

#[tokio::test]
async fn twenty_batches_complete_with_the_exact_aggregate_within_the_parallelism_cap() {
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::new("twenty").await;
    let (peak, sampler) = sample_alive(&client, &ns.name);

    let started = Instant::now();
    create(
        &runs,
        &sim_run(
            "payroll",
            2000,
            100,
            4,
            r#"sim.batchguard.dev/duration: "2s""#,
            "",
        ),
    )
    .await;
    let run = wait_finished(&runs, "payroll", Duration::from_secs(240), &operator).await;
    let took = started.elapsed();
    sampler.abort();

    let status = run.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    assert_eq!(status.completed, "0-1999");
    assert_eq!(status.progress.as_deref(), Some("2000/2000"));
    assert_eq!(status.aggregate.records, 2000);
    assert_eq!(status.aggregate.sums.get("records"), Some(&2000.0));
    assert_eq!(status.aggregate.outputs.count, 20);
    assert_eq!(status.batches.succeeded, 20);
    assert_eq!(status.batches.failed, 0);
    assert_eq!(
        condition(&run, "Complete").map(|c| c.status.as_str()),
        Some("True")
    );
    assert_eq!(
        condition(&run, "Ready").map(|c| c.status.as_str()),
        Some("True")
    );
    let (jobs_peak, pods_peak) = *peak.lock().unwrap();
    assert!(
        jobs_peak <= 4 && pods_peak <= 4,
        "parallelism 4 exceeded: {jobs_peak} Jobs, {pods_peak} pods alive at once"
    );
    assert!(jobs_peak >= 2, "batches ran in parallel (peak {jobs_peak})");
    println!(
        "20-batch run took {:.1}s; peak alive Jobs {jobs_peak}, pods {pods_peak}",
        took.as_secs_f64()
    );

    // Finished batches leave nothing behind: Jobs removed, pods released and collected.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    wait_for(
        "worker pods to be released and removed",
        Duration::from_secs(60),
        || async {
            let left = pods.list(&ListParams::default()).await.ok()?;
            left.items.is_empty().then_some(())
        },
    )
    .await;
    let metrics = operator.metrics().await;
    assert!(
        metrics.contains("batchguard_batches_total{result=\"succeeded\"} 20"),
        "{metrics}"
    );
}

#[tokio::test]
async fn failed_batches_are_retried_and_reported_past_max_attempts() {
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::new("retry").await;
    let retry = "  retry: {maxAttempts: 2, backoff: {baseSeconds: 1, maxSeconds: 2}}";

    // Records 100-199 fail once, then succeed.
    let flaky = r#"sim.batchguard.dev/fail-ranges: "100", sim.batchguard.dev/fail-attempts: "1", sim.batchguard.dev/fail-message: "disk hiccup""#;
    create(&runs, &sim_run("flaky", 500, 100, 2, flaky, retry)).await;
    // Records 300-399 fail every time.
    let broken = r#"sim.batchguard.dev/fail-ranges: "300", sim.batchguard.dev/exit-code: "3", sim.batchguard.dev/fail-message: "bad row 345""#;
    create(&runs, &sim_run("broken", 500, 100, 2, broken, retry)).await;

    let flaky = wait_finished(&runs, "flaky", Duration::from_secs(180), &operator).await;
    let status = flaky.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    assert_eq!(
        status.aggregate.records, 500,
        "the retried batch is counted once"
    );
    assert_eq!(status.failures.len(), 1);
    assert_eq!(status.failures[0].range, "100-199");
    assert_eq!(status.failures[0].attempt, 1);
    assert!(
        status.failures[0].message.contains("disk hiccup"),
        "{:?}",
        status.failures[0]
    );

    let broken = wait_finished(&runs, "broken", Duration::from_secs(180), &operator).await;
    let status = broken.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Failed), "{status:?}");
    assert_eq!(status.failed, "300-399");
    assert_eq!(status.completed, "0-299,400-499");
    assert_eq!(status.aggregate.records, 400);
    assert_eq!(status.batches.failed, 1);
    let failed = condition(&broken, "Failed").expect("a Failed condition");
    assert!(
        failed
            .message
            .contains("records 300-399 failed after 2 attempts"),
        "{}",
        failed.message
    );
    assert!(failed.message.contains("bad row 345"), "{}", failed.message);
    assert_eq!(
        condition(&broken, "Stalled").map(|c| c.status.as_str()),
        Some("True")
    );

    // Events are written after the status that they describe: wait for them (on a busy machine
    // a second or two later), and say which ones never came.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let expected = ["BatchFailed", "RunFailed", "RunSucceeded"];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reasons: Vec<String> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .iter()
            .filter_map(|e| e.reason.clone())
            .collect();
        let missing: Vec<&str> = expected
            .into_iter()
            .filter(|r| !reasons.iter().any(|seen| seen == r))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no {missing:?} Event: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn an_oom_killed_batch_is_retried_in_halves() {
    let Setup {
        client: _,
        ns: _ns,
        operator,
        runs,
    } = Setup::new("oom").await;
    let oom = r#"sim.batchguard.dev/fail-ranges: "0", sim.batchguard.dev/fail-attempts: "1", sim.batchguard.dev/reason: OOMKilled, sim.batchguard.dev/exit-code: "137""#;
    create(&runs, &sim_run("oom", 300, 100, 2, oom, "")).await;
    let run = wait_finished(&runs, "oom", Duration::from_secs(120), &operator).await;
    let status = run.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    assert_eq!(status.aggregate.records, 300);
    assert_eq!(status.guard.oom_kills, 1);
    assert_eq!(
        status.aggregate.outputs.count, 4,
        "two halves of 0-99 and two whole batches"
    );
    assert_eq!(status.failures[0].reason.as_str(), "OOMKilled");
}

#[tokio::test]
async fn sigkilled_operator_ends_with_the_exact_aggregate_and_one_job_per_attempt() {
    let Setup {
        client,
        ns,
        mut operator,
        runs,
    } = Setup::new("crash").await;
    let (jobs_seen, recorder) = record_jobs(&client, &ns.name);

    create(
        &runs,
        &sim_run(
            "crashy",
            3000,
            100,
            5,
            r#"sim.batchguard.dev/duration: "1500ms""#,
            "",
        ),
    )
    .await;
    // SIGKILL at pseudo-random moments: the delays come from the clock, the sequence differs per run.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    for kill in 1..=5 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis(700 + (seed >> 33) % 3000);
        tokio::time::sleep(delay).await;
        operator.restart();
        println!("kill {kill} after {delay:?}");
    }
    let run = wait_finished(&runs, "crashy", Duration::from_secs(300), &operator).await;
    recorder.abort();
    let status = run.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    assert_eq!(status.aggregate.records, 3000);
    assert_eq!(status.aggregate.sums.get("records"), Some(&3000.0));
    assert_eq!(status.aggregate.outputs.count, 30);
    assert_eq!(status.completed, "0-2999");
    let seen = jobs_seen.lock().unwrap();
    assert_eq!(
        seen.len(),
        30,
        "one attempt per batch: {:?}",
        seen.keys().collect::<Vec<_>>()
    );
    let doubled: Vec<_> = seen.iter().filter(|(_, uids)| uids.len() > 1).collect();
    assert!(
        doubled.is_empty(),
        "batch attempts created twice: {doubled:?}"
    );
}

#[tokio::test]
async fn suspend_holds_new_batches_and_deletion_releases_workers() {
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::new("suspend").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    create(
        &runs,
        &sim_run(
            "held",
            1000,
            100,
            2,
            r#"sim.batchguard.dev/duration: "30s""#,
            "  suspend: true",
        ),
    )
    .await;
    wait_for("the Suspended phase", Duration::from_secs(30), || async {
        let run = runs.get("held").await.ok()?;
        (run.status?.phase == Some(Phase::Suspended)).then_some(())
    })
    .await;
    assert!(
        jobs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "a suspended run launches nothing"
    );

    let resume = serde_json::json!({"spec": {"suspend": false}});
    runs.patch("held", &PatchParams::default(), &Patch::Merge(&resume))
        .await
        .unwrap();
    wait_for("two running workers", Duration::from_secs(60), || async {
        let list = pods.list(&ListParams::default()).await.ok()?;
        let running = list
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        (running == 2).then_some(())
    })
    .await;

    runs.delete("held", &DeleteParams::default()).await.unwrap();
    wait_for(
        "the run and its workers to be gone",
        Duration::from_secs(90),
        || async {
            let run_gone = runs.get_opt("held").await.ok()?.is_none();
            let pods_left = pods.list(&ListParams::default()).await.ok()?.items.len();
            (run_gone && pods_left == 0).then_some(())
        },
    )
    .await;
    drop(operator);
}
