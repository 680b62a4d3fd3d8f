//! batchguard on the local cluster's real node: workers are real containers in real memory
//! cgroups, the guard reads the real kubelet's cAdvisor series through Prometheus, the kernel
//! OOM-kills what outgrows its limit, and the operator itself runs as a pod installed by Helm.
//!
//! Needs `tests/cluster/up` run as root (it then starts the real node and exports
//! BATCHGUARD_REAL_NODE and the image names); without them every test here fails saying so.

mod support;

use std::time::Duration;

use batchguard::api::{BatchRun, Phase};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use support::*;

/// A worker built on the Python SDK that keeps `mib_per_record` MiB per record it processes,
/// one record every `seconds_per_record`, and sums the record offsets into `total`.
fn growing_python_worker(mib_per_record: u32, seconds_per_record: f64) -> String {
    format!(
        r#"
import time
from batchguard_worker import Batch
held = []
with Batch.from_env() as batch:
    for chunk in batch.chunks(1):
        held.append(b"\x01" * ({mib_per_record} << 20))
        time.sleep({seconds_per_record})
        batch.add_sum("total", sum(range(chunk.start, chunk.end)))
        batch.done(chunk)
"#
    )
}

/// Pods of the namespace that the kernel OOM-killed, by name.
async fn oom_killed_pods(client: &kube::Client, namespace: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.list(&ListParams::default())
        .await
        .unwrap()
        .iter()
        .filter(|pod| {
            pod.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten()
                .any(|c| {
                    c.state
                        .as_ref()
                        .and_then(|s| s.terminated.as_ref())
                        .is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"))
                })
        })
        .map(|pod| pod.name_any())
        .collect()
}

#[tokio::test]
async fn the_guard_drains_a_real_python_worker_before_the_kernel_kills_it() {
    let node = RealNode::from_env();
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::new("real-drain").await;
    // 2 MiB per record at 4 MiB/s: a 120-record batch needs 240 MiB plus the interpreter,
    // more than its 256Mi limit, and crosses 85% (218 MiB) about 25 s in; the guard (1 s
    // housekeeping + 1 s scrape + 1 s poll) has some 9 s before the limit.
    let script = growing_python_worker(2, 0.5);
    let guard = "  memoryGuard: {threshold: 85, action: Drain, drainGracePeriodSeconds: 20, onPressure: Resume}";
    let run = python_run(
        &node,
        "grow",
        (240, 120, 2),
        ("256Mi", "256Mi"),
        &script,
        guard,
    );
    runs.create(&PostParams::default(), &run).await.unwrap();

    let run = wait_finished(&runs, "grow", Duration::from_secs(300), &operator).await;
    let status = run.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert_eq!(status.aggregate.records, 240, "{status:#?}");
    assert_eq!(status.completed, "0-239");
    assert_eq!(
        status.aggregate.sums.get("total"),
        Some(&sum_of_offsets(240))
    );
    assert!(
        status.guard.drains >= 2,
        "each 120-record batch outgrows its limit and must be drained: {:?}",
        status.guard
    );
    assert!(
        (85..100).contains(&status.guard.peak_percent),
        "drained between the threshold and the limit, seen at {}%",
        status.guard.peak_percent
    );
    assert_eq!(status.guard.oom_kills, 0, "{:?}", status.guard);
    assert!(status.failures.is_empty(), "{:?}", status.failures);
    assert_eq!(
        oom_killed_pods(&client, &ns.name).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_real_oom_kill_splits_the_batch_and_the_halves_complete() {
    let node = RealNode::from_env();
    let Setup {
        client: _,
        ns: _ns,
        operator,
        runs,
    } = Setup::new("real-oom").await;
    // 24 MiB per record at once: 8 records (192 MiB) cannot live under a 128Mi limit, 4 (96 MiB
    // plus the interpreter) can. The guard only observes, so the kernel is the one to act.
    let script = growing_python_worker(24, 0.05);
    let guard =
        "  memoryGuard: {action: Observe}\n  retry: {backoff: {baseSeconds: 1, maxSeconds: 2}}";
    let run = python_run(&node, "oom", (16, 8, 2), ("128Mi", "128Mi"), &script, guard);
    runs.create(&PostParams::default(), &run).await.unwrap();

    let run = wait_finished(&runs, "oom", Duration::from_secs(240), &operator).await;
    let status = run.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert!(
        status.guard.oom_kills >= 2,
        "both 8-record batches were OOM-killed by the kernel: {:?}",
        status.guard
    );
    assert_eq!(status.aggregate.records, 16);
    assert_eq!(status.completed, "0-15");
    assert_eq!(
        status.aggregate.sums.get("total"),
        Some(&sum_of_offsets(16))
    );
}

#[tokio::test]
async fn the_rust_sdk_example_worker_completes_on_the_real_node() {
    let node = RealNode::from_env();
    let Setup {
        client: _,
        ns: _ns,
        operator,
        runs,
    } = Setup::new("real-rust").await;
    let run = batch_run(&format!(
        r#"
apiVersion: batchguard.dev/v1alpha1
kind: BatchRun
metadata:
  name: counted
spec:
  input:
    range: {{start: 0, end: 5000}}
    batchSize: 2500
  parallelism: 2
  template:
    spec:
{placement}
      containers:
        - name: worker
          image: {image}
          imagePullPolicy: Never
  resources:
    memory: {{request: 32Mi, limit: 64Mi}}
"#,
        placement = node.placement(6),
        image = node.rust_worker_image,
    ));
    runs.create(&PostParams::default(), &run).await.unwrap();
    let run = wait_finished(&runs, "counted", Duration::from_secs(120), &operator).await;
    let status = run.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert_eq!(status.aggregate.records, 5000);
    let expected: f64 = (0..5000u64).map(|r| (r % 7) as f64).sum();
    assert_eq!(status.aggregate.sums.get("total"), Some(&expected));
}

#[tokio::test]
async fn the_helm_installed_operator_runs_as_a_restricted_pod_and_completes_a_run() {
    let node = RealNode::from_env();
    let client = client().await;
    let suffix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
        % 100_000_000;
    let system = format!("bg-system-{suffix}");
    let work = TestNamespace::new(&client, "bg-work").await;
    // The operator's namespace enforces the restricted Pod Security level.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let restricted = serde_json::from_value(serde_json::json!({"metadata": {"name": system,
        "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}))
    .unwrap();
    namespaces
        .create(&PostParams::default(), &restricted)
        .await
        .unwrap();
    let _system = TestNamespace {
        name: system.clone(),
    };

    let nodes: Api<Node> = Api::all(client.clone());
    let node_ip = nodes
        .get(&node.name)
        .await
        .unwrap()
        .status
        .and_then(|s| s.addresses)
        .into_iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address)
        .expect("the real node has an InternalIP");
    let prometheus_port = std::env::var("PROMETHEUS_URL")
        .expect("PROMETHEUS_URL (tests/cluster/up exports it)")
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let (repository, tag) = node
        .operator_image
        .rsplit_once(':')
        .expect("an image reference with a tag");
    let release = format!("bg{suffix}");
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/batchguard");
    let values = format!(
        r#"
image: {{repository: "{repository}", tag: "{tag}", pullPolicy: Never}}
crds: {{install: false}}
leaderElection: true
watchNamespaces: ["{work}"]
logFormat: text
logLevel: "info,batchguard=debug"
memoryGuard: {{prometheusUrl: "http://{node_ip}:{prometheus_port}", pollIntervalSeconds: 1}}
nodeSelector: {{batchguard.dev/real-node: "true"}}
tolerations: [{{key: batchguard.dev/real-node, operator: Exists, effect: NoSchedule}}]
"#,
        work = work.name
    );
    let values_file = std::env::temp_dir().join(format!("{release}-values.yaml"));
    std::fs::write(&values_file, values).unwrap();
    let helm = |args: &[&str]| {
        let out = std::process::Command::new("helm")
            .args(args)
            .output()
            .expect("helm on PATH (tests/cluster/up puts it there)");
        assert!(
            out.status.success(),
            "helm {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    helm(&[
        "install",
        &release,
        chart,
        "--namespace",
        &system,
        "-f",
        values_file.to_str().unwrap(),
        "--wait",
        "--timeout",
        "120s",
    ]);

    // The operator is a real container on the real node, non-root, with a read-only root.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &system);
    let operator_pod = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .expect("the operator pod");
    let spec = operator_pod.spec.clone().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some(node.name.as_str()));
    let container = &spec.containers[0];
    let security = container.security_context.clone().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(
        spec.security_context.and_then(|s| s.run_as_non_root),
        Some(true)
    );

    let runs: Api<BatchRun> = Api::namespaced(client.clone(), &work.name);
    let run = python_run(
        &node,
        "in-cluster",
        (3000, 1000, 2),
        ("64Mi", "128Mi"),
        &growing_python_worker(0, 0.0),
        "",
    );
    runs.create(&PostParams::default(), &run).await.unwrap();
    let finished = wait_for(
        "the in-cluster operator to finish the run",
        Duration::from_secs(180),
        || async {
            let run = runs.get("in-cluster").await.ok()?;
            let status = run.status?;
            matches!(status.phase, Some(Phase::Succeeded | Phase::Failed)).then_some(status)
        },
    )
    .await;
    assert_eq!(finished.phase, Some(Phase::Succeeded), "{finished:#?}");
    assert_eq!(finished.aggregate.records, 3000);
    assert_eq!(
        finished.aggregate.sums.get("total"),
        Some(&sum_of_offsets(3000))
    );
    // The leader holds its Lease under the chart's RBAC.
    let (ok, leases, err) = kubectl(&["get", "leases", "-n", &system, "-o", "name"], None);
    assert!(ok && !leases.trim().is_empty(), "no Lease: {leases}{err}");

    // Deleting the run while the operator is there releases every finalizer; the uninstall
    // then leaves nothing of batchguard's behind.
    let (ok, _, err) = kubectl(
        &[
            "delete",
            "batchrun",
            "in-cluster",
            "-n",
            &work.name,
            "--wait=true",
            "--timeout=60s",
        ],
        None,
    );
    assert!(ok, "the run was not deleted: {err}");
    helm(&["uninstall", &release, "--namespace", &system, "--wait"]);
    let (_, left, _) = kubectl(
        &[
            "get",
            "pods,jobs",
            "-n",
            &work.name,
            "-o",
            "jsonpath={.items[*].metadata.finalizers}",
        ],
        None,
    );
    assert!(
        !left.contains("batchguard.dev"),
        "finalizers left behind: {left}"
    );
}
