//! More memory after an OOM kill, on the local cluster's real node: a record the kernel kills
//! at the run's limit runs again with twice the memory and completes; a record that does not
//! fit even at `spec.resources.memory.max` fails with a message that names it.
//!
//! Needs `tests/cluster/up` run as root (BATCHGUARD_REAL_NODE and the worker image).

mod support;

use std::time::Duration;

use batchguard::api::{BatchRun, Phase};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{ListParams, PostParams};
use support::*;

/// Six records in batches of two. Record 3 holds 80 MiB (more than 64Mi, well under 128Mi),
/// record 4 holds 400 MiB (more than the 256Mi ceiling); the others hold nothing. The guard
/// only observes, so the kernel is the one to act.
const WORKER: &str = r#"
import time
from batchguard_worker import Batch
need = {3: 80, 4: 400}
with Batch.from_env() as batch:
    for chunk in batch.chunks(1):
        held = b"\x01" * (need.get(chunk.start, 0) << 20)
        time.sleep(0.2)
        batch.add_sum("total", chunk.start)
        batch.done(chunk)
"#;

fn run(node: &RealNode) -> BatchRun {
    let command = serde_json::to_string(&["python3", "-c", WORKER]).unwrap();
    batch_run(&format!(
        r#"
apiVersion: batchguard.dev/v1alpha1
kind: BatchRun
metadata:
  name: grow
spec:
  input:
    range: {{start: 0, end: 6}}
    batchSize: 2
  parallelism: 2
  template:
    spec:
{placement}
      containers:
        - name: worker
          image: {image}
          imagePullPolicy: Never
          command: {command}
  resources:
    memory: {{request: 64Mi, limit: 64Mi, max: 256Mi}}
  memoryGuard: {{action: Observe}}
  retention: {{succeededSeconds: 600}}
  retry: {{backoff: {{baseSeconds: 1, maxSeconds: 2}}}}
"#,
        placement = node.placement(6),
        image = node.worker_image,
    ))
}

/// The worker container's memory limit in the Job of records `[start, end)`, attempt `attempt`.
async fn job_limit(jobs: &Api<Job>, start: u64, end: u64, attempt: u32) -> Option<String> {
    let selector = format!(
        "batchguard.dev/range-start={start},batchguard.dev/range-end={end},batchguard.dev/attempt={attempt}"
    );
    let list = jobs
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    let job = list.items.first()?;
    let pod = job.spec.as_ref()?.template.spec.as_ref()?;
    let limits = pod.containers[0].resources.as_ref()?.limits.as_ref()?;
    Some(limits.get("memory")?.0.clone())
}

#[tokio::test]
async fn an_oom_killed_record_runs_again_with_more_memory_and_one_past_the_ceiling_is_named() {
    let node = RealNode::from_env();
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::new("more-memory").await;
    runs.create(&PostParams::default(), &run(&node))
        .await
        .unwrap();

    let finished = wait_finished(&runs, "grow", Duration::from_secs(300), &operator).await;
    let status = finished.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Failed), "{status:#?}");
    assert_eq!(status.completed, "0-3,5", "{status:#?}");
    assert_eq!(status.failed, "4", "{status:#?}");
    assert_eq!(status.aggregate.records, 5);
    assert_eq!(
        status.aggregate.sums.get("total"),
        Some(&[0.0, 1.0, 2.0, 3.0, 5.0].iter().sum::<f64>()),
        "each completed record counted once: {status:#?}"
    );
    // [2,4) and [4,6) are killed, then 3 at 64Mi, then 4 at 64Mi, 128Mi and 256Mi.
    assert_eq!(status.guard.oom_kills, 6, "{:?}", status.guard);
    let ceiling = status
        .failures
        .iter()
        .find(|f| f.range == "4" && f.memory_limit.as_deref() == Some("256Mi"))
        .unwrap_or_else(|| panic!("no failure of record 4 at 256Mi: {:#?}", status.failures));
    assert!(
        ceiling
            .message
            .contains("record 4 needs more memory than the 256Mi ceiling"),
        "{ceiling:?}"
    );
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed")
        .unwrap();
    assert!(
        condition.message.contains("record 4 needs more memory"),
        "{condition:?}"
    );

    // The Jobs show the memory each attempt got: halves at the spec's 64Mi, record 3 again
    // at 128Mi, record 4 at 128Mi and then 256Mi.
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    assert_eq!(job_limit(&jobs, 2, 4, 1).await.as_deref(), Some("64Mi"));
    assert_eq!(job_limit(&jobs, 3, 4, 2).await.as_deref(), Some("64Mi"));
    assert_eq!(job_limit(&jobs, 3, 4, 3).await.as_deref(), Some("128Mi"));
    assert_eq!(job_limit(&jobs, 4, 5, 3).await.as_deref(), Some("128Mi"));
    assert_eq!(job_limit(&jobs, 4, 5, 4).await.as_deref(), Some("256Mi"));
    assert_eq!(
        job_limit(&jobs, 4, 5, 5).await,
        None,
        "no try past the ceiling"
    );

    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let grown: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .iter()
        .filter(|e| e.reason.as_deref() == Some("MoreMemory"))
        .filter_map(|e| e.message.clone())
        .collect();
    assert!(
        grown
            .iter()
            .any(|m| m.contains("records 3 run again with a 128Mi limit")),
        "{grown:?}"
    );
}
