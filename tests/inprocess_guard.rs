//! The SDK's in-process memory guard on the local cluster's real node: real containers in real
//! memory cgroups, a Python worker growing faster than the operator's Prometheus guard can see.
//! With the SDK guard the worker checkpoints itself below its limit and the operator counts a
//! drain; the same worker with the SDK guard turned off is OOM-killed by the kernel.
//!
//! The workers run the Python SDK of this checkout (from a ConfigMap on PYTHONPATH), not the
//! one baked into the worker image. Needs `tests/cluster/up` run as root (BATCHGUARD_REAL_NODE).

mod support;

use std::time::Duration;

use batchguard::api::{BatchRun, BatchRunStatus, Phase};
use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use support::*;

const SDK_CONFIG_MAP: &str = "batchguard-sdk";
const SDK_FILES: [&str; 3] = ["__init__.py", "_batch.py", "_guard.py"];
const RECORDS: u64 = 80;
const BATCH: u64 = 40;

/// 6 MiB per record, one record every 100 ms (some 60 MiB/s), and like a pandas merge a
/// sudden 40 MiB more once the working set is past 88% of the limit: a 40-record batch (240
/// MiB plus the interpreter) crosses 85% of 128Mi about 1.7 s in, and at most 0.2 s later the
/// spike takes it past the limit at once (more than the kernel can reclaim from file pages, so
/// the worker cannot linger near the limit). Well inside the in-process guard's 50 ms poll,
/// well outside what cAdvisor housekeeping, a Prometheus scrape and the operator's poll (about a
/// second each) can see in time.
/// The worker times the guard: from the allocation that took its cgroup past the threshold to
/// the guard's stop, reported as the sums `guard_reaction_ms` over `guard_stops`, and the
/// highest working set it read, as `peak_mib_<batch start>`.
const WORKER: &str = r#"
import os, time
from batchguard_worker import Batch, read_cgroup
limit = int(os.environ["BATCHGUARD_MEMORY_LIMIT_BYTES"])
threshold = float(os.environ["BATCHGUARD_MEMORY_THRESHOLD_PERCENT"])
held, crossed, allocated, reactions, peak, spike = [], None, None, [], 0, False
with Batch.from_env() as batch:
    if batch.guard is not None:
        stop = batch.guard.on_stop
        def timed(seen):
            # Before the loop read the crossing itself, it was the last allocation.
            reactions.append(time.monotonic() - (crossed or allocated or time.monotonic()))
            stop(seen)
        batch.guard.on_stop = timed
    for chunk in batch.chunks(1):
        held.append(b"\x01" * ((40 if spike else 6) << 20))
        allocated = time.monotonic()
        reading = read_cgroup()
        if reading:
            peak = max(peak, reading.working_set_bytes)
            if crossed is None and reading.working_set_bytes * 100 >= threshold * limit:
                crossed = allocated
            spike = reading.working_set_bytes * 100 >= 88 * limit
        time.sleep(0.1)
        batch.add_sum("total", sum(range(chunk.start, chunk.end)))
        batch.done(chunk)
    if reactions:
        batch.add_sum("guard_stops", 1)
        batch.add_sum("guard_reaction_ms", reactions[0] * 1000)
    batch.add_sum(f"peak_mib_{batch.start}", peak / (1 << 20))
"#;

/// This checkout's Python SDK as a ConfigMap, mounted by the runs below.
async fn publish_sdk(client: &Client, namespace: &str) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sdk/python/batchguard_worker");
    let data: serde_json::Map<String, serde_json::Value> = SDK_FILES
        .iter()
        .map(|file| {
            let text = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
            (file.to_string(), text.into())
        })
        .collect();
    let map: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": SDK_CONFIG_MAP}, "data": data,
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &map)
        .await
        .unwrap();
}

/// The run: records `[0, 80)` in two batches of 40 on the real node, 128Mi, the guard draining
/// at 85%; `sdk_guard` is the worker's BATCHGUARD_SDK_GUARD.
fn growing_run(node: &RealNode, name: &str, sdk_guard: &str) -> BatchRun {
    let command = serde_json::to_string(&["python3", "-c", WORKER]).unwrap();
    batch_run(&format!(
        r#"
apiVersion: batchguard.dev/v1alpha1
kind: BatchRun
metadata:
  name: {name}
spec:
  input:
    range: {{start: 0, end: {RECORDS}}}
    batchSize: {BATCH}
  parallelism: 2
  template:
    spec:
{placement}
      volumes:
        - name: sdk
          configMap: {{name: {SDK_CONFIG_MAP}}}
      containers:
        - name: worker
          image: {image}
          imagePullPolicy: Never
          command: {command}
          env:
            - {{name: PYTHONPATH, value: /opt/batchguard-sdk}}
            - {{name: PYTHONDONTWRITEBYTECODE, value: "1"}}
            - {{name: BATCHGUARD_SDK_GUARD, value: "{sdk_guard}"}}
            - {{name: BATCHGUARD_GUARD_INTERVAL_MS, value: "50"}}
          volumeMounts:
            - {{name: sdk, mountPath: /opt/batchguard-sdk/batchguard_worker, readOnly: true}}
  resources:
    memory: {{request: 128Mi, limit: 128Mi}}
  memoryGuard: {{threshold: 85, action: Drain, drainGracePeriodSeconds: 20, onPressure: Resume}}
  retry: {{backoff: {{baseSeconds: 1, maxSeconds: 2}}}}
"#,
        placement = node.placement(6),
        image = node.worker_image,
    ))
}

/// The notes of the Events with this reason, each with how many times it happened (the
/// recorder folds repeats of one reason and action into a series that keeps the first note).
async fn event_notes(client: &Client, namespace: &str, reason: &str) -> Vec<(String, i32)> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let list = events.list(&ListParams::default()).await.unwrap();
    list.iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| {
            let count = e.series.as_ref().and_then(|s| s.count).or(e.count);
            (
                e.message.clone().unwrap_or_default(),
                count.unwrap_or(1).max(1),
            )
        })
        .collect()
}

fn assert_exact(status: &BatchRunStatus) {
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert_eq!(status.aggregate.records, RECORDS, "{status:#?}");
    assert_eq!(status.completed, format!("0-{}", RECORDS - 1));
    assert_eq!(
        status.aggregate.sums.get("total"),
        Some(&sum_of_offsets(RECORDS)),
        "{status:#?}"
    );
}

/// Runs the growing worker to the end in a namespace of its own, the exact aggregate checked.
async fn run_to_the_end(prefix: &str, sdk_guard: &str) -> (Setup, BatchRunStatus) {
    let node = RealNode::from_env();
    let setup = Setup::new(prefix).await;
    publish_sdk(&setup.client, &setup.ns.name).await;
    let run = growing_run(&node, "grow", sdk_guard);
    setup
        .runs
        .create(&PostParams::default(), &run)
        .await
        .unwrap();
    let timeout = Duration::from_secs(300);
    let run = wait_finished(&setup.runs, "grow", timeout, &setup.operator).await;
    let status = run.status.unwrap();
    assert_exact(&status);
    (setup, status)
}

#[tokio::test]
async fn the_sdk_guard_checkpoints_a_fast_growing_worker_before_the_kernel_kills_it() {
    let (
        Setup {
            client,
            ns,
            operator,
            ..
        },
        status,
    ) = run_to_the_end("inproc", "on").await;
    assert_eq!(status.guard.oom_kills, 0, "{:?}", status.guard);
    assert!(status.failures.is_empty(), "{:?}", status.failures);
    assert!(
        status.guard.drains >= 2,
        "each 40-record batch outgrows its limit and must stop once: {:?}",
        status.guard
    );
    assert_eq!(
        status.batches.drained, status.guard.drains,
        "one count per drain"
    );
    assert!(
        (85..100).contains(&status.guard.peak_percent),
        "stopped between the threshold and the limit, seen at {}%",
        status.guard.peak_percent
    );

    let in_process: Vec<(String, i32)> = event_notes(&client, &ns.name, "Drained")
        .await
        .into_iter()
        .filter(|(note, _)| note.contains("in-process guard"))
        .collect();
    assert!(
        !in_process.is_empty(),
        "a Drained Event names the in-process guard: {:?}",
        event_notes(&client, &ns.name, "Drained").await
    );
    let stops = status
        .aggregate
        .sums
        .get("guard_stops")
        .copied()
        .unwrap_or(0.0);
    let reaction_ms = status
        .aggregate
        .sums
        .get("guard_reaction_ms")
        .copied()
        .unwrap_or(0.0);
    assert!(stops >= 1.0, "{:?}", status.aggregate.sums);
    let mean_reaction_ms = reaction_ms / stops;
    println!(
        "guard {:?}; in-process Drained {in_process:?}; mean reaction {mean_reaction_ms:.0} ms over {stops} stops; sums {:?}; other guard Events: {:?} {:?}",
        status.guard,
        status.aggregate.sums,
        event_notes(&client, &ns.name, "Drained").await.len() - in_process.len(),
        event_notes(&client, &ns.name, "BatchContinued").await,
    );
    assert!(
        mean_reaction_ms < 500.0,
        "the guard polls every 50 ms, yet took {mean_reaction_ms:.0} ms"
    );
    let metrics = operator.metrics().await;
    assert!(
        metrics.contains(r#"result="DrainedInProcess""#),
        "the drain metric counts in-process drains:\n{metrics}"
    );
}

#[tokio::test]
async fn the_same_worker_without_the_sdk_guard_is_oom_killed() {
    let (Setup { client, ns, .. }, status) = run_to_the_end("inproc-off", "off").await;
    // The kernel kills the 40-record batches, and their halves until the pieces fit.
    assert!(
        status.guard.oom_kills >= 1,
        "the Prometheus guard alone is too late for 60 MiB/s: {:?}",
        status.guard
    );
    let in_process = event_notes(&client, &ns.name, "Drained").await;
    assert!(
        in_process
            .iter()
            .all(|(note, _)| !note.contains("in-process guard")),
        "{in_process:?}"
    );
    assert_eq!(status.aggregate.sums.get("guard_stops"), None);
    println!(
        "without the SDK guard: {:?}; sums {:?}",
        status.guard, status.aggregate.sums
    );
}
