//! Bad BatchRun manifests fail at `kubectl apply`, each with a message naming the field.

mod support;

use serde_yaml::Value;
use support::*;

const VALID: &str = r#"
apiVersion: batchguard.dev/v1alpha1
kind: BatchRun
metadata:
  name: checked
spec:
  input:
    range: {start: 0, end: 100}
    batchSize: 10
  parallelism: 2
  template:
    spec:
      containers:
        - name: worker
          image: registry.example/worker:1
  resources:
    memory: {request: 1Gi, limit: 2Gi}
"#;

/// Sets (or with `None` removes) the value at a dotted path of the manifest.
fn edit(path: &str, value: Option<&str>) -> String {
    let mut doc: Value = serde_yaml::from_str(VALID).unwrap();
    let keys: Vec<&str> = path.split('.').collect();
    let mut node = &mut doc;
    for key in &keys[..keys.len() - 1] {
        node = match key.parse::<usize>() {
            Ok(i) => &mut node[i],
            Err(_) => node
                .as_mapping_mut()
                .unwrap()
                .entry(Value::from(*key))
                .or_insert(Value::Mapping(Default::default())),
        };
    }
    let last = *keys.last().unwrap();
    let map = node.as_mapping_mut().unwrap();
    match value {
        Some(v) => {
            map.insert(Value::from(last), serde_yaml::from_str(v).unwrap());
        }
        None => {
            map.remove(last);
        }
    }
    serde_yaml::to_string(&doc).unwrap()
}

#[tokio::test]
async fn invalid_manifests_are_rejected_at_apply_naming_the_field() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "validation").await;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "range and items",
            edit("spec.input.items", Some("[a, b]")),
            "spec.input must set exactly one of range or items",
        ),
        (
            "neither range nor items",
            edit("spec.input.range", None),
            "spec.input must set exactly one of range or items",
        ),
        (
            "end before start",
            edit("spec.input.range", Some("{start: 50, end: 50}")),
            "spec.input.range.end must be greater than spec.input.range.start",
        ),
        (
            "negative start",
            edit("spec.input.range", Some("{start: -1, end: 50}")),
            "spec.input.range.start",
        ),
        (
            "zero batch size",
            edit("spec.input.batchSize", Some("0")),
            "spec.input.batchSize",
        ),
        (
            "empty items",
            edit("spec.input", Some("{items: [], batchSize: 1}")),
            "spec.input.items",
        ),
        (
            "zero parallelism",
            edit("spec.parallelism", Some("0")),
            "spec.parallelism",
        ),
        (
            "request above limit",
            edit("spec.resources.memory", Some("{request: 3Gi, limit: 2Gi}")),
            "spec.resources.memory.request must not be greater than spec.resources.memory.limit",
        ),
        (
            "request not a quantity",
            edit("spec.resources.memory.request", Some("lots")),
            "spec.resources.memory.request must be a quantity",
        ),
        (
            "limit not a quantity",
            edit("spec.resources.memory.limit", Some("2GB")),
            "spec.resources.memory.limit must be a quantity",
        ),
        (
            "limit of zero (unlimited to the kubelet)",
            edit(
                "spec.resources.memory",
                Some("{request: '0', limit: '0Gi'}"),
            ),
            "spec.resources.memory.limit must be greater than 0",
        ),
        (
            "request of zero",
            edit("spec.resources.memory.request", Some("'0'")),
            "spec.resources.memory.request must be greater than 0",
        ),
        (
            "ceiling below the limit",
            edit(
                "spec.resources.memory",
                Some("{request: 1Gi, limit: 2Gi, max: 1536Mi}"),
            ),
            "spec.resources.memory.max must not be less than spec.resources.memory.limit",
        ),
        (
            "ceiling not a quantity",
            edit(
                "spec.resources.memory",
                Some("{request: 1Gi, limit: 2Gi, max: lots}"),
            ),
            "spec.resources.memory.max must be a quantity",
        ),
        (
            "onOOM unknown",
            edit("spec.memoryGuard", Some("{onOOM: Double}")),
            "spec.memoryGuard.onOOM",
        ),
        (
            "memory missing",
            edit("spec.resources", None),
            "spec.resources",
        ),
        (
            "threshold zero",
            edit("spec.memoryGuard", Some("{threshold: 0}")),
            "spec.memoryGuard.threshold",
        ),
        (
            "threshold 100",
            edit("spec.memoryGuard", Some("{threshold: 100}")),
            "spec.memoryGuard.threshold",
        ),
        (
            "queue not a name",
            edit("spec.queue", Some("Month_End")),
            "spec.queue",
        ),
        (
            "queue and kueue",
            {
                let mut doc: Value =
                    serde_yaml::from_str(&edit("spec.kueue", Some("{queueName: team-a}"))).unwrap();
                doc["spec"]
                    .as_mapping_mut()
                    .unwrap()
                    .insert("queue".into(), "month-end".into());
                serde_yaml::to_string(&doc).unwrap()
            },
            "spec.queue and spec.kueue exclude each other",
        ),
        (
            "unknown action",
            edit("spec.memoryGuard", Some("{action: Kill}")),
            "spec.memoryGuard.action",
        ),
        (
            "unknown onPressure",
            edit("spec.memoryGuard", Some("{onPressure: Halve}")),
            "spec.memoryGuard.onPressure",
        ),
        (
            "no containers",
            edit("spec.template.spec.containers", Some("[]")),
            "spec.template.spec.containers must hold at least one container",
        ),
        (
            "no template spec",
            edit("spec.template", Some("{metadata: {labels: {a: b}}}")),
            "spec.template.spec.containers must hold at least one container",
        ),
        (
            "zero max attempts",
            edit("spec.retry", Some("{maxAttempts: 0}")),
            "spec.retry.maxAttempts",
        ),
        (
            "backoff base above max",
            edit(
                "spec.retry",
                Some("{backoff: {baseSeconds: 60, maxSeconds: 10}}"),
            ),
            "spec.retry.backoff.baseSeconds must not be greater than maxSeconds",
        ),
        (
            "typo in the worker template",
            edit("spec.template.spec.containers.0.imagee", Some("x")),
            "imagee",
        ),
        (
            "name too long",
            edit("metadata.name", Some(&"n".repeat(64))),
            "metadata.name must be at most 63 characters",
        ),
    ];
    assert!(cases.len() >= 15);
    let mut failures = vec![];
    for (what, manifest, expected) in &cases {
        let (ok, _, stderr) = kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(manifest));
        if ok || !stderr.contains(expected) {
            failures.push(format!(
                "{what}: accepted={ok}, expected {expected:?} in: {stderr}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    let (ok, _, stderr) = kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(VALID));
    assert!(ok, "the valid manifest applies: {stderr}");
    let changed = edit("spec.input.batchSize", Some("20"));
    let (ok, _, stderr) = kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&changed));
    assert!(
        !ok && stderr.contains("spec.input is immutable"),
        "input is immutable: {stderr}"
    );
    let resized = edit("spec.parallelism", Some("5"));
    let (ok, _, stderr) = kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&resized));
    assert!(ok, "parallelism may change mid-run: {stderr}");
}

#[tokio::test]
async fn the_crd_applies_client_side_with_kubectl() {
    let _client = client().await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/");
    let (ok, stdout, stderr) = kubectl(&["apply", "-f", dir], None);
    assert!(ok, "kubectl apply -f crds/ failed: {stderr}");
    assert!(stdout.contains("batchruns.batchguard.dev"), "{stdout}");
    assert!(stdout.contains("batchqueues.batchguard.dev"), "{stdout}");
}

#[tokio::test]
async fn every_example_passes_server_side_validation() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "examples").await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/");
    for file in [
        "payroll.yaml",
        "payroll-kwok.yaml",
        "routing.yaml",
        "month-end.yaml",
    ] {
        let path = format!("{dir}{file}");
        let (ok, stdout, stderr) = kubectl(
            &["apply", "--dry-run=server", "-n", &ns.name, "-f", &path],
            None,
        );
        assert!(ok, "{file} is refused: {stderr}");
        assert!(
            stdout.contains("batchrun.batchguard.dev/"),
            "{file}: {stdout}"
        );
    }
}
