//! The memory guard against the real cluster and Prometheus: a worker near its limit is
//! drained and its rest continues, batches shrink after a memory-hungry one, and a guard that
//! cannot reach Prometheus says so, acts on nothing, and recovers by itself.
//!
//! Worker memory is kwok's simulation (tests/cluster/README.md): `sim.batchguard.dev/memory`
//! for a fixed value, `memory-growth` per second, `memory-attempts` to grow only on early
//! attempts, `resume-after` for the checkpoint a drained worker reports.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use batchguard::api::{BatchRun, Phase};
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{ListParams, PostParams};
use support::*;

/// Two workers at a time with the guard settings given.
fn guarded(name: &str, end: u64, batch_size: u64, annotations: &str, guard: &str) -> BatchRun {
    sim_run(
        name,
        end,
        batch_size,
        2,
        annotations,
        &format!("  memoryGuard: {guard}"),
    )
}

async fn event_notes(client: &kube::Client, namespace: &str, reason: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let list = events.list(&ListParams::default()).await.unwrap();
    list.iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.message.clone())
        .collect()
}

/// How many times an Event with this reason happened (repeats are counted in a series).
async fn event_count(client: &kube::Client, namespace: &str, reason: &str) -> i32 {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let list = events.list(&ListParams::default()).await.unwrap();
    list.iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| {
            e.series
                .as_ref()
                .and_then(|s| s.count)
                .or(e.count)
                .unwrap_or(1)
                .max(1)
        })
        .sum()
}

#[tokio::test]
async fn a_worker_near_its_limit_is_drained_and_its_rest_continues() {
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::new("drain").await;
    // First attempts grow 20Mi/s and cross 85% of 128Mi after about 5.5s; they checkpoint 50
    // records when drained. Continuations stay at 50Mi and finish.
    let annotations = r#"sim.batchguard.dev/duration: "12s", sim.batchguard.dev/memory-growth: "20Mi", sim.batchguard.dev/memory-attempts: "1", sim.batchguard.dev/resume-after: "50""#;
    let guard = "{threshold: 85, action: Drain, drainGracePeriodSeconds: 2, onPressure: Resume}";
    runs.create(
        &PostParams::default(),
        &guarded("etl", 400, 200, annotations, guard),
    )
    .await
    .unwrap();

    let run = wait_finished(&runs, "etl", Duration::from_secs(120), &operator).await;
    let status = run.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    assert_eq!(
        status.aggregate.records, 400,
        "checkpointed and continued records are each counted once"
    );
    assert_eq!(status.completed, "0-399");
    assert_eq!(status.guard.drains, 2, "{:?}", status.guard);
    assert_eq!(status.batches.drained, 2);
    assert!(
        status.guard.peak_percent >= 85,
        "peak {}",
        status.guard.peak_percent
    );
    assert!(
        status.failures.is_empty(),
        "a drain is not a failure: {:?}",
        status.failures
    );
    assert_eq!(event_count(&client, &ns.name, "Drained").await, 2);
    let drained = event_notes(&client, &ns.name, "Drained").await;
    assert!(
        drained
            .iter()
            .all(|n| n.contains("% of its 128Mi limit (threshold 85%)")),
        "{drained:?}"
    );
    let continued = event_notes(&client, &ns.name, "BatchContinued").await;
    assert!(
        continued
            .iter()
            .any(|n| n.contains("records 50-199 continue")),
        "{continued:?}"
    );
    let metrics = operator.metrics().await;
    assert!(
        metrics.contains("batchguard_guard_actions_total{result=\"Drained\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn later_batches_shrink_after_a_memory_hungry_batch() {
    let Setup {
        client: _,
        ns: _ns,
        operator,
        runs,
    } = Setup::new("adaptive").await;
    // 1Mi per record: 100 records take 100Mi of the 128Mi limit, under the threshold but too
    // close for comfort.
    let annotations =
        r#"sim.batchguard.dev/duration: "4s", sim.batchguard.dev/memory-per-record: "1Mi""#;
    let mut run = guarded(
        "hungry",
        300,
        100,
        annotations,
        "{threshold: 85, action: Drain}",
    );
    run.spec.parallelism = 1;
    runs.create(&PostParams::default(), &run).await.unwrap();

    let run = wait_finished(&runs, "hungry", Duration::from_secs(120), &operator).await;
    let status = run.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    assert_eq!(status.aggregate.records, 300);
    // 100Mi per 100 records → about 1Mi per record; 85% × 0.8 of 128Mi fits 87 records.
    assert_eq!(status.guard.bytes_per_record, 1 << 20, "{:?}", status.guard);
    assert_eq!(status.guard.batch_size, 87, "{:?}", status.guard);
    assert!(
        status.aggregate.outputs.count >= 4,
        "smaller batches after the first: {}",
        status.aggregate.outputs.count
    );
    assert_eq!(status.guard.drains, 0);
}

/// A TCP relay to Prometheus that the test can cut and restore.
async fn relay(target: String, open: Arc<AtomicBool>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            if !open.load(Ordering::Relaxed) {
                drop(inbound);
                continue;
            }
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    address
}

#[tokio::test]
async fn a_blind_guard_says_so_acts_on_nothing_and_recovers() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "blind").await;
    let prometheus = std::env::var("PROMETHEUS_URL").expect("PROMETHEUS_URL from tests/cluster/up");
    let open = Arc::new(AtomicBool::new(false));
    let address = relay(
        prometheus
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string(),
        open.clone(),
    )
    .await;
    let url = format!("http://{address}");
    let operator = Operator::start_with_env(&ns.name, &[("PROMETHEUS_URL", &url)]);
    let runs: Api<BatchRun> = Api::namespaced(client.clone(), &ns.name);
    // Memory far above the threshold: only a guard that reads missing data as data would act.
    let annotations = r#"sim.batchguard.dev/duration: "20s", sim.batchguard.dev/memory: "120Mi""#;
    let mut run = guarded(
        "unseen",
        200,
        100,
        annotations,
        "{threshold: 85, action: Drain}",
    );
    run.spec.parallelism = 2;
    runs.create(&PostParams::default(), &run).await.unwrap();

    let condition = |run: BatchRun| {
        run.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "MemoryPressure")
    };
    let blind = wait_for(
        "the GuardBlind condition",
        Duration::from_secs(60),
        || async {
            let c = condition(runs.get("unseen").await.ok()?)?;
            (c.reason == "GuardBlind").then_some(c)
        },
    )
    .await;
    assert_eq!(blind.status, "Unknown");
    assert!(
        blind.message.contains("memory guard blind since"),
        "{}",
        blind.message
    );
    assert!(
        !event_notes(&client, &ns.name, "GuardBlind")
            .await
            .is_empty()
    );
    assert!(
        event_notes(&client, &ns.name, "Drained").await.is_empty(),
        "blind: no action"
    );

    open.store(true, Ordering::Relaxed);
    let seen = wait_for(
        "the guard to see again and act",
        Duration::from_secs(60),
        || async {
            let c = condition(runs.get("unseen").await.ok()?)?;
            (c.reason != "GuardBlind").then_some(c)
        },
    )
    .await;
    assert_ne!(seen.status, "Unknown");
    wait_for(
        "a drain at 94% once the guard sees",
        Duration::from_secs(60),
        || async {
            let notes = event_notes(&client, &ns.name, "Drained").await;
            notes.iter().any(|n| n.contains("at 94%")).then_some(())
        },
    )
    .await;
    assert!(
        !event_notes(&client, &ns.name, "GuardRecovered")
            .await
            .is_empty()
    );
    let metrics = operator.metrics().await;
    assert!(
        metrics.contains("batchguard_guard_query_failures_total"),
        "{metrics}"
    );
}
