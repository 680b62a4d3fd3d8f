//! BatchQueues against the real local cluster: a burst of runs shares one memory budget, never
//! exceeds it (sampled from the API throughout, across operator kills), is served fairly, and
//! a lowered budget admits nothing new until usage falls under it. Bad queues are refused.
//!
//! Workers follow the `sim.batchguard.dev/*` convention of tests/cluster/README.md.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batchguard::api::{BatchQueue, BatchRun, Phase};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use support::*;

/// Every worker of these tests has a 128Mi limit.
const WORKER_MI: u64 = 128;

fn queued_run(name: &str, queue: &str, batches: u64, duration: &str) -> BatchRun {
    let annotations = format!(r#"sim.batchguard.dev/duration: "{duration}""#);
    sim_run(
        name,
        batches * 10,
        10,
        10,
        &annotations,
        &format!("  queue: {queue}"),
    )
}

/// What the sampler saw of a queue's workers.
#[derive(Default)]
struct Samples {
    /// Most workers alive at once.
    peak: usize,
    /// (when, live pod names) of every sample.
    history: Vec<(Instant, BTreeSet<String>)>,
}

/// Lists the queue's worker pods from the API every 100 ms: a pod holds memory until it has
/// ended, terminating or not.
fn sample_workers(
    client: &Client,
    namespace: &str,
    queue: &str,
) -> (Arc<Mutex<Samples>>, tokio::task::JoinHandle<()>) {
    let samples = Arc::new(Mutex::new(Samples::default()));
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("batchguard.dev/queue={queue}");
    let seen = samples.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await {
                let live: BTreeSet<String> = list
                    .iter()
                    .filter(|p| {
                        !matches!(
                            p.status.as_ref().and_then(|s| s.phase.as_deref()),
                            Some("Succeeded" | "Failed")
                        )
                    })
                    .map(|p| p.name_any())
                    .collect();
                let mut samples = seen.lock().unwrap();
                samples.peak = samples.peak.max(live.len());
                samples.history.push((Instant::now(), live));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (samples, task)
}

async fn wait_all_finished(setup: &Setup, names: &[String], timeout: Duration) -> Vec<BatchRun> {
    let mut finished = vec![];
    for name in names {
        finished.push(wait_finished(&setup.runs, name, timeout, &setup.operator).await);
    }
    finished
}

fn assert_exact(run: &BatchRun, batches: u64) {
    let status = run.status.as_ref().unwrap();
    assert_eq!(
        status.phase,
        Some(Phase::Succeeded),
        "{}: {status:?}",
        run.name_any()
    );
    assert_eq!(status.aggregate.records, batches * 10, "{}", run.name_any());
    assert_eq!(status.batches.succeeded, batches, "{}", run.name_any());
    assert_eq!(status.batches.failed, 0, "{}", run.name_any());
}

#[tokio::test]
async fn a_burst_of_runs_shares_the_budget_fairly_and_never_exceeds_it() {
    let setup = Setup::new("queue-burst").await;
    let ns = setup.ns.name.clone();
    create_queue(
        &setup.client,
        &ns,
        "month-end",
        &format!("{}Mi", 3 * WORKER_MI),
        Some(50),
    )
    .await;
    let (samples, sampler) = sample_workers(&setup.client, &ns, "month-end");

    // Every client's statements at once: 10 runs of 3 batches, each run allowed 10 at a time.
    let names: Vec<String> = (0..10).map(|i| format!("client-{i}")).collect();
    for name in &names {
        setup
            .runs
            .create(
                &PostParams::default(),
                &queued_run(name, "month-end", 3, "2s"),
            )
            .await
            .unwrap();
    }

    // While the burst runs, the queue and the waiting runs say what is going on.
    let queues: Api<BatchQueue> = Api::namespaced(setup.client.clone(), &ns);
    let saturated = wait_for(
        "the queue to list waiting runs",
        Duration::from_secs(30),
        || async {
            let status = queues.get("month-end").await.ok()?.status?;
            (!status.waiting_runs.is_empty()).then_some(status)
        },
    )
    .await;
    assert!(saturated.admitted_batches <= 3, "{saturated:?}");
    assert_eq!(saturated.waiting_runs[0].position, 1);
    let queued = wait_for(
        "a run to report it is queued",
        Duration::from_secs(30),
        || async {
            for name in &names {
                let run = setup.runs.get(name).await.ok()?;
                let condition = run.status?.conditions.into_iter().find(|c| {
                    c.type_ == "Queued" && c.status == "True" && c.reason == "WaitingForRoom"
                });
                if condition.is_some() {
                    return condition;
                }
            }
            None
        },
    )
    .await;
    assert!(
        queued.message.contains(" for queue month-end: ") && queued.message.contains("of 384Mi"),
        "{}",
        queued.message
    );
    let metrics = setup.operator.metrics().await;
    assert!(
        metrics.contains(&format!(
            "batchguard_queue_budget_bytes{{namespace=\"{ns}\",queue=\"month-end\"}} {}",
            (3 * WORKER_MI) << 20
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("batchguard_queue_waiting_batches{"),
        "{metrics}"
    );

    let finished = wait_all_finished(&setup, &names, Duration::from_secs(240)).await;
    sampler.abort();
    for run in &finished {
        assert_exact(run, 3);
    }
    let peak = samples.lock().unwrap().peak;
    assert!(
        peak <= 3,
        "{peak} workers alive at once in a queue that fits 3"
    );
    assert!(peak >= 2, "the queue was never used: peak {peak}");

    // Fair: every run started before any run finished (first come, first served would
    // finish the first runs before the last ones start).
    let time =
        |run: &BatchRun, pick: fn(&batchguard::api::BatchRunStatus) -> Option<jiff::Timestamp>| {
            pick(run.status.as_ref().unwrap()).unwrap()
        };
    let last_start = finished
        .iter()
        .map(|r| time(r, |s| s.start_time.as_ref().map(|t| t.0)))
        .max()
        .unwrap();
    let first_end = finished
        .iter()
        .map(|r| time(r, |s| s.completion_time.as_ref().map(|t| t.0)))
        .min()
        .unwrap();
    assert!(
        last_start <= first_end,
        "the last run started at {last_start}, after the first finished at {first_end}"
    );
    let ends: Vec<_> = finished
        .iter()
        .map(|r| time(r, |s| s.completion_time.as_ref().map(|t| t.0)))
        .collect();
    let spread = ends.iter().max().unwrap().duration_since(first_end);
    println!("completion spread across 10 runs: {spread:#}, peak {peak} workers");

    let status = queues.get("month-end").await.unwrap().status.unwrap();
    assert_eq!(status.waiting_batches, 0);
}

#[tokio::test]
async fn the_budget_holds_while_the_operator_is_killed_during_a_burst() {
    let mut setup = Setup::new("queue-kill").await;
    let ns = setup.ns.name.clone();
    create_queue(
        &setup.client,
        &ns,
        "shared",
        &format!("{}Mi", 2 * WORKER_MI),
        Some(50),
    )
    .await;
    let (samples, sampler) = sample_workers(&setup.client, &ns, "shared");
    let names: Vec<String> = (0..4).map(|i| format!("tenant-{i}")).collect();
    for name in &names {
        setup
            .runs
            .create(&PostParams::default(), &queued_run(name, "shared", 4, "1s"))
            .await
            .unwrap();
    }
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        setup.operator.restart();
    }
    let finished = wait_all_finished(&setup, &names, Duration::from_secs(180)).await;
    sampler.abort();
    for run in &finished {
        assert_exact(run, 4);
    }
    let peak = samples.lock().unwrap().peak;
    assert!(
        peak <= 2,
        "{peak} workers alive at once in a queue that fits 2"
    );
}

#[tokio::test]
async fn a_lowered_budget_admits_nothing_new_until_usage_falls_under_it() {
    let setup = Setup::new("queue-lower").await;
    let ns = setup.ns.name.clone();
    create_queue(
        &setup.client,
        &ns,
        "nightly",
        &format!("{}Mi", 4 * WORKER_MI),
        Some(50),
    )
    .await;
    let (samples, sampler) = sample_workers(&setup.client, &ns, "nightly");
    let names = vec!["ledger".to_string(), "invoices".to_string()];
    for name in &names {
        setup
            .runs
            .create(
                &PostParams::default(),
                &queued_run(name, "nightly", 4, "5s"),
            )
            .await
            .unwrap();
    }
    wait_for("4 workers admitted", Duration::from_secs(30), || async {
        (samples.lock().unwrap().history.last()?.1.len() == 4).then_some(())
    })
    .await;

    // Lower the budget to one worker mid-burst.
    let queues: Api<BatchQueue> = Api::namespaced(setup.client.clone(), &ns);
    queues
        .patch(
            "nightly",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"memory": format!("{WORKER_MI}Mi")}})),
        )
        .await
        .unwrap();
    let lowered = Instant::now();

    let finished = wait_all_finished(&setup, &names, Duration::from_secs(180)).await;
    sampler.abort();
    // Nothing running was killed: every batch succeeded on its first attempt.
    for run in &finished {
        assert_exact(run, 4);
        let status = run.status.as_ref().unwrap();
        assert_eq!(status.guard.drains + status.guard.restarts, 0);
        assert!(status.failures.is_empty(), "{:?}", status.failures);
    }
    // After the change reached the operator (one second of slack for its watch), a worker
    // only started when it was alone: usage had fallen under the new budget.
    let samples = samples.lock().unwrap();
    let mut known: BTreeSet<String> = BTreeSet::new();
    let mut started_after = 0;
    for (at, live) in &samples.history {
        let new: Vec<&String> = live.iter().filter(|p| !known.contains(*p)).collect();
        if *at > lowered + Duration::from_secs(1) && !new.is_empty() {
            started_after += new.len();
            assert_eq!(
                live.len(),
                1,
                "a worker started beside others after the budget was lowered: {live:?}"
            );
        }
        known.extend(live.iter().cloned());
    }
    assert!(
        started_after >= 2,
        "the rest of the batches ran one at a time ({started_after})"
    );
}

#[tokio::test]
async fn bad_queues_are_refused_at_apply_or_reported_on_the_run() {
    let setup = Setup::new("queue-bad").await;
    let ns = setup.ns.name.clone();
    for (spec, expected) in [
        ("{memory: -1Gi}", "spec.memory must be a positive quantity"),
        ("{memory: '0'}", "spec.memory must be a positive quantity"),
        ("{memory: lots}", "spec.memory must be a positive quantity"),
        ("{memory: 1Gi, maxBatches: 0}", "spec.maxBatches"),
        ("{memory: 1Gi, fairness: Lottery}", "spec.fairness"),
    ] {
        let manifest = format!(
            "apiVersion: batchguard.dev/v1alpha1\nkind: BatchQueue\nmetadata: {{name: bad, namespace: {ns}}}\nspec: {spec}\n"
        );
        let (ok, _, stderr) = kubectl(&["apply", "-f", "-"], Some(&manifest));
        assert!(!ok, "{spec} was accepted");
        assert!(stderr.contains(expected), "{spec}: {stderr}");
    }
    let both = format!(
        r#"
apiVersion: batchguard.dev/v1alpha1
kind: BatchRun
metadata: {{name: both, namespace: {ns}}}
spec:
  queue: month-end
  kueue: {{queueName: team-a}}
  input: {{range: {{start: 0, end: 10}}, batchSize: 10}}
  template: {{spec: {{containers: [{{name: worker, image: w}}]}}}}
  resources: {{memory: {{request: 64Mi, limit: 128Mi}}}}
"#
    );
    let (ok, _, stderr) = kubectl(&["apply", "-f", "-"], Some(&both));
    assert!(!ok, "a run with both a queue and kueue was accepted");
    assert!(
        stderr.contains("spec.queue and spec.kueue exclude each other"),
        "{stderr}"
    );

    // A run naming a queue that does not exist waits, and says why.
    setup
        .runs
        .create(
            &PostParams::default(),
            &queued_run("orphan", "missing", 2, "1s"),
        )
        .await
        .unwrap();
    let reason = |wanted: &'static str| {
        let runs = setup.runs.clone();
        move || {
            let runs = runs.clone();
            async move {
                let run = runs.get("orphan").await.ok()?;
                run.status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "Queued" && c.status == "True" && c.reason == wanted)
            }
        }
    };
    let missing = wait_for(
        "QueueNotFound",
        Duration::from_secs(30),
        reason("QueueNotFound"),
    )
    .await;
    assert!(
        missing
            .message
            .contains("BatchQueue missing does not exist"),
        "{}",
        missing.message
    );
    let pods: Api<Pod> = Api::namespaced(setup.client.clone(), &ns);
    assert!(
        pods.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // A queue too small for even one worker is reported as such.
    create_queue(&setup.client, &ns, "missing", "64Mi", Some(50)).await;
    let small = wait_for(
        "ExceedsQueueBudget",
        Duration::from_secs(30),
        reason("ExceedsQueueBudget"),
    )
    .await;
    assert!(
        small
            .message
            .contains("needs 128Mi but queue missing admits 64Mi in all"),
        "{}",
        small.message
    );

    // Raised, the queue admits the run, which completes.
    Api::<BatchQueue>::namespaced(setup.client.clone(), &ns)
        .patch(
            "missing",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"memory": "256Mi"}})),
        )
        .await
        .unwrap();
    let run = wait_finished(
        &setup.runs,
        "orphan",
        Duration::from_secs(60),
        &setup.operator,
    )
    .await;
    assert_exact(&run, 2);
    let admitted = run
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Queued")
        .unwrap();
    assert_eq!(
        (admitted.status.as_str(), admitted.reason.as_str()),
        ("False", "RunFinished")
    );
}

#[tokio::test]
async fn a_drained_worker_holds_its_memory_until_its_pod_is_gone() {
    let setup = Setup::new("queue-drain").await;
    let ns = setup.ns.name.clone();
    create_queue(
        &setup.client,
        &ns,
        "etl",
        &format!("{}Mi", 2 * WORKER_MI),
        Some(50),
    )
    .await;
    let (samples, sampler) = sample_workers(&setup.client, &ns, "etl");
    // First attempts grow 20Mi/s, cross 85% of 128Mi after about 5.5 s and are drained with a
    // 3 s grace, checkpointing 50 records; continuations finish. A second run fills the gaps.
    let mut hungry = queued_run("hungry", "etl", 2, "12s");
    hungry.spec.input.batch_size = 100;
    hungry.spec.input.range.as_mut().unwrap().end = 200;
    hungry.spec.template.metadata.as_mut().unwrap().annotations = Some(
        [
            ("sim.batchguard.dev/duration", "12s"),
            ("sim.batchguard.dev/memory-growth", "20Mi"),
            ("sim.batchguard.dev/memory-attempts", "1"),
            ("sim.batchguard.dev/resume-after", "50"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    hungry.spec.memory_guard.drain_grace_period_seconds = 3;
    hungry.spec.memory_guard.on_pressure = batchguard::api::OnPressure::Resume;
    for run in [hungry, queued_run("steady", "etl", 6, "1s")] {
        setup
            .runs
            .create(&PostParams::default(), &run)
            .await
            .unwrap();
    }
    let finished = wait_all_finished(
        &setup,
        &["hungry".to_string(), "steady".to_string()],
        Duration::from_secs(180),
    )
    .await;
    sampler.abort();
    let hungry = finished[0].status.as_ref().unwrap();
    assert_eq!(hungry.phase, Some(Phase::Succeeded), "{hungry:?}");
    assert_eq!(hungry.aggregate.records, 200, "each record counted once");
    assert!(hungry.guard.drains >= 1, "{:?}", hungry.guard);
    assert_exact(&finished[1], 6);
    let peak = samples.lock().unwrap().peak;
    assert!(
        peak <= 2,
        "{peak} workers (draining ones included) alive in a queue that fits 2"
    );
}
