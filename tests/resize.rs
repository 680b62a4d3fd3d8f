//! Resize before drain on the local cluster's real node: a worker crossing the threshold of a
//! run with a memory ceiling gets a larger limit in place (the same container keeps running,
//! its batch completes in one attempt, its BatchQueue holds the new size); when the queue has
//! no room for the growth the worker is drained instead, and so it is when the node has no room
//! and the kubelet defers the resize; each drain says why.
//!
//! The workers' own SDK guard is off here: the test is about the operator's guard.
//! Needs `tests/cluster/up` run as root (BATCHGUARD_REAL_NODE and the worker image).

mod support;

use std::time::Duration;

use batchguard::api::memory_bytes;
use batchguard::api::{BatchQueue, BatchRun, Phase};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use support::*;

const MIB: u64 = 1 << 20;

/// 64 MiB of ballast, then 2 MiB per record, one record a second, the peak held for a second:
/// with `records` = 24 about 124 MiB, more than a 96Mi limit. The threshold (85% of 96Mi) is
/// crossed about 4 s in, some 7 s before the limit: time for the guard to see it (2-3 s) and
/// for the kubelet to apply the resize.
const WORKER: &str = r#"
import time
from batchguard_worker import Batch
ballast = b"\x01" * (64 << 20)
held = []
with Batch.from_env() as batch:
    for chunk in batch.chunks(1):
        held.append(b"\x01" * (2 << 20))
        time.sleep(1)
        batch.add_sum("total", chunk.start)
        batch.done(chunk)
    time.sleep(1)
"#;

fn run(node: &RealNode, name: &str, records: u64, queue: &str) -> BatchRun {
    let command = serde_json::to_string(&["python3", "-c", WORKER]).unwrap();
    batch_run(&format!(
        r#"
apiVersion: batchguard.dev/v1alpha1
kind: BatchRun
metadata:
  name: {name}
spec:
  input:
    range: {{start: 0, end: {records}}}
    batchSize: {records}
  queue: {queue}
  template:
    spec:
{placement}
      containers:
        - name: worker
          image: {image}
          imagePullPolicy: Never
          command: {command}
          env: [{{name: BATCHGUARD_SDK_GUARD, value: "off"}}]
  resources:
    memory: {{request: 96Mi, limit: 96Mi, max: 256Mi}}
  memoryGuard: {{threshold: 85, action: Drain, drainGracePeriodSeconds: 20, onPressure: Resume}}
  retention: {{succeededSeconds: 600}}
"#,
        placement = node.placement(6),
        image = node.worker_image,
    ))
}

#[tokio::test]
async fn a_worker_over_the_threshold_grows_in_place_and_completes_in_one_attempt() {
    let node = RealNode::from_env();
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::new("resize").await;
    create_queue(&client, &ns.name, "roomy", "1Gi", None).await;
    runs.create(&PostParams::default(), &run(&node, "grows", 24, "roomy"))
        .await
        .unwrap();

    // While it runs, the queue holds what the worker holds: 96Mi, then 192Mi once grown.
    let queues: Api<BatchQueue> = Api::namespaced(client.clone(), &ns.name);
    let grown = wait_for(
        "the queue to hold the grown worker",
        Duration::from_secs(120),
        || async {
            let status = queues.get("roomy").await.ok()?.status?;
            (status.admitted_bytes == 192 * MIB).then_some(status)
        },
    )
    .await;
    assert_eq!(grown.admitted_memory.as_deref(), Some("192Mi"));

    let finished = wait_finished(&runs, "grows", Duration::from_secs(180), &operator).await;
    let status = finished.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert_eq!(status.aggregate.records, 24);
    assert_eq!(
        status.aggregate.sums.get("total"),
        Some(&sum_of_offsets(24))
    );
    assert_eq!(status.guard.resizes, 1, "{:?}", status.guard);
    assert_eq!(
        (
            status.guard.drains,
            status.guard.oom_kills,
            status.batches.drained
        ),
        (0, 0, 0),
        "{:?}",
        status.guard
    );

    // One Job, one pod, one container start: the memory grew under the running worker.
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    assert_eq!(
        jobs.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pods = pods.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(pods.len(), 1);
    let worker = &pods[0]
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    assert_eq!(worker.restart_count, 0);
    let applied = worker.resources.as_ref().and_then(|r| r.limits.as_ref());
    assert_eq!(
        applied.and_then(|l| l.get("memory")).map(|q| q.0.as_str()),
        Some("192Mi"),
        "the kubelet applied the new limit: {worker:?}"
    );
    let resized = event_notes(&client, &ns.name, "Resized").await;
    println!("Resized: {resized:?}\nguard: {:?}", status.guard);
    assert!(
        resized
            .iter()
            .any(|m| m.contains("memory grown in place to a 192Mi limit (192Mi request)")),
        "{resized:?}"
    );
}

#[tokio::test]
async fn a_worker_whose_queue_has_no_room_to_grow_is_drained_instead() {
    let node = RealNode::from_env();
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::new("resize-full").await;
    create_queue(&client, &ns.name, "tight", "160Mi", None).await;
    runs.create(&PostParams::default(), &run(&node, "tight", 12, "tight"))
        .await
        .unwrap();

    let finished = wait_finished(&runs, "tight", Duration::from_secs(240), &operator).await;
    let status = finished.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert_eq!(status.aggregate.records, 12);
    assert_eq!(
        status.aggregate.sums.get("total"),
        Some(&sum_of_offsets(12))
    );
    assert_eq!(status.guard.resizes, 0, "{:?}", status.guard);
    assert!(status.guard.drains >= 1, "{:?}", status.guard);
    let drained = event_notes(&client, &ns.name, "Drained").await;
    println!("Drained: {drained:?}\nguard: {:?}", status.guard);
    assert!(
        drained.iter().any(|m| m.contains(
            "(not grown in place: its queue has 64Mi free, 32Mi short of growing it to 192Mi)"
        )),
        "{drained:?}"
    );
}

/// Memory the real node's kubelet has not given to any pod's request yet.
async fn unrequested_bytes(client: &Client, node: &str) -> u64 {
    let allocatable = Api::<Node>::all(client.clone())
        .get(node)
        .await
        .unwrap()
        .status
        .and_then(|s| s.allocatable)
        .and_then(|a| a.get("memory").map(|q| memory_bytes(&q.0).unwrap()))
        .unwrap();
    let on_node = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let requested: u64 = Api::<Pod>::all(client.clone())
        .list(&on_node)
        .await
        .unwrap()
        .iter()
        // Pods on their way out hold memory until they are gone: the filler waits for it,
        // and the room computed here is the room left once they went.
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .flat_map(|p| p.spec.iter().flat_map(|s| s.containers.iter()))
        .filter_map(|c| {
            c.resources
                .as_ref()?
                .requests
                .as_ref()?
                .get("memory")
                .cloned()
        })
        .map(|q| memory_bytes(&q.0).unwrap())
        .sum();
    allocatable.saturating_sub(requested)
}

#[tokio::test]
async fn a_resize_the_node_has_no_room_for_is_given_up_and_the_worker_drained() {
    let node = RealNode::from_env();
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::new("resize-node").await;
    create_queue(&client, &ns.name, "roomy", "1Gi", None).await;
    // A pause pod takes all but 150Mi of the node's memory: the worker's 96Mi fits, the 96Mi
    // more it would grow by does not, so the kubelet defers the resize.
    let filler = unrequested_bytes(&client, &node.name).await - 150 * MIB;
    let pod: Pod = serde_yaml::from_str(&format!(
        r#"
metadata: {{name: filler}}
spec:
{placement}
  containers:
    - name: pause
      image: {pause}
      imagePullPolicy: Never
      resources: {{requests: {{memory: "{filler}"}}, limits: {{memory: "{filler}"}}}}
"#,
        placement = node.placement(2),
        // The local cluster's sandbox image, imported on the real node.
        pause = "batchguard.local/pause:1",
    ))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    wait_for("the filler to run", Duration::from_secs(60), || async {
        let phase = pods.get("filler").await.ok()?.status?.phase?;
        (phase == "Running").then_some(())
    })
    .await;

    let left = unrequested_bytes(&client, &node.name).await;
    assert!(
        (96 * MIB..192 * MIB).contains(&left),
        "room for the worker, not for its growth: {left}"
    );
    runs.create(&PostParams::default(), &run(&node, "deferred", 12, "roomy"))
        .await
        .unwrap();
    let finished = wait_finished(&runs, "deferred", Duration::from_secs(240), &operator).await;
    let status = finished.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert_eq!(status.aggregate.records, 12);
    assert_eq!(
        status.aggregate.sums.get("total"),
        Some(&sum_of_offsets(12))
    );
    assert_eq!(
        status.guard.resizes, 0,
        "none was applied: {:?}",
        status.guard
    );
    assert!(status.guard.drains >= 1, "{:?}", status.guard);
    let drained = event_notes(&client, &ns.name, "Drained").await;
    println!("Drained: {drained:?}\nguard: {:?}", status.guard);
    assert!(
        drained
            .iter()
            .any(|m| m.contains("(not grown in place: its resize to 192Mi is not applied yet")),
        "{drained:?}"
    );
}
