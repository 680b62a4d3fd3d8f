//! The Helm chart against the local cluster: it lints and renders for the server, its schema
//! refuses typos, its RBAC is enough for a whole run and nothing more, upgrades and uninstalls
//! cleanly; and BatchRuns read right to kstatus, to Argo CD's health check, and under GitOps
//! re-applies.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use batchguard::api::{BatchRun, Phase};
use kube::Api;
use kube::api::PostParams;
use serde::Deserialize;
use serde_json::Value;
use support::*;

fn sim_run_500(name: &str, annotations: &str, extra: &str) -> BatchRun {
    sim_run(name, 500, 100, 2, annotations, extra)
}

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/batchguard");

fn helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("helm")
        .args(args)
        .output()
        .expect("helm on PATH (tests/cluster/up puts it there)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn template(extra: &[&str]) -> String {
    let mut args = vec![
        "template",
        "bg",
        CHART,
        "--namespace",
        "batchguard-system",
        "--kube-version",
        "1.37.2",
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = helm(&args);
    assert!(ok, "helm template {extra:?} failed: {err}");
    out
}

/// The documents of a rendered chart.
fn docs(rendered: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(rendered)
        .filter_map(|doc| Value::deserialize(doc).ok())
        .filter(|doc| !doc.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

async fn namespace(client: &kube::Client, name: &str) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    let _ = api.create(&PostParams::default(), &ns).await;
}

#[tokio::test]
async fn the_chart_lints_and_renders_for_the_server() {
    let client = client().await;
    install_crd(&client).await;
    let all = format!("{CHART}/ci/all-features-values.yaml");
    for values in [vec![], vec!["-f", all.as_str()]] {
        let (ok, out, err) = helm(&[&["lint", "--strict", CHART][..], &values[..]].concat());
        assert!(ok, "helm lint --strict {values:?}: {out}{err}");
    }
    for ns in ["batchguard-system", "team-a", "team-b", "monitoring"] {
        namespace(&client, ns).await;
    }
    for rendered in [template(&[]), template(&["-f", &all])] {
        let (ok, out, err) = kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&rendered));
        assert!(ok, "the server refused the rendered chart: {err}\n{out}");
        assert!(
            out.contains("deployment.apps/bg-batchguard created (server dry run)"),
            "{out}"
        );
    }
    assert!(
        !template(&["-f", &all]).contains("kind: ServiceMonitor"),
        "no ServiceMonitor without its API"
    );
    let with_api = template(&[
        "-f",
        &all,
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
    ]);
    assert!(with_api.contains("kind: ServiceMonitor"));
    let forced = docs(&template(&[
        "-f",
        &all,
        "--set",
        "serviceMonitor.force=true,prometheusRule.force=true",
    ]));
    assert_eq!(
        kind(&forced, "ServiceMonitor")["spec"]["endpoints"][0]["port"],
        "metrics",
        "force renders it for helm template and GitOps renderers"
    );
    kind(&forced, "PrometheusRule");

    // The values platform teams set, as the all-features file sets them.
    let deployment = kind(&forced, "Deployment");
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args.last(),
        Some(&"--lease-name=batchguard-ci-leader"),
        "extraArgs come last: {args:?}"
    );
    assert!(
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "NO_PROXY")
    );
    assert!(
        container["image"]
            .as_str()
            .unwrap()
            .starts_with("ghcr.io/batchguard/batchguard@sha256:"),
        "image.digest pins the image: {}",
        container["image"]
    );
    assert_eq!(pod["metadata"]["labels"]["team"], "data");
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/name"], "batchguard",
        "podLabels cannot take the selector labels"
    );
    assert_eq!(pod["spec"]["priorityClassName"], "batch-critical");
    assert_eq!(
        pod["spec"]["topologySpreadConstraints"][0]["topologyKey"],
        "topology.kubernetes.io/zone"
    );
    assert!(
        with_api.contains("--leader-election"),
        "two replicas elect a leader"
    );
    let default = template(&[]);
    assert!(
        default.contains("kind: ClusterRole"),
        "all namespaces: cluster-wide RBAC"
    );
    assert!(
        !default.contains("secrets") && !default.contains("\"*\""),
        "no secrets, no wildcards"
    );
}

#[test]
fn the_schema_refuses_bad_values_with_clear_messages() {
    let cases = [
        ("replica=2", "additional properties 'replica' not allowed"),
        (
            "logFormat=yaml",
            "at '/logFormat': value must be one of 'text', 'json'",
        ),
        (
            "memoryGuard.metric=heap",
            "at '/memoryGuard/metric': value must be one of",
        ),
        ("adminPort=70000", "at '/adminPort'"),
        ("watchNamespaces={Team_A}", "at '/watchNamespaces/0'"),
        (
            "memoryGuard.prometheusUrl=prometheus:9090",
            "at '/memoryGuard/prometheusUrl'",
        ),
        (
            "serviceMonitor.enable=true",
            "additional properties 'enable' not allowed",
        ),
        ("image.digest=latest", "at '/image/digest'"),
        (
            "crds.instal=false",
            "additional properties 'instal' not allowed",
        ),
    ];
    for (set, expected) in cases {
        let (ok, _, err) = helm(&[
            "template",
            "bg",
            CHART,
            "--kube-version",
            "1.37.2",
            "--set",
            set,
        ]);
        assert!(!ok, "--set {set} was accepted");
        assert!(
            err.contains("values don't meet the specifications of the schema"),
            "{set}: {err}"
        );
        assert!(
            err.contains(expected),
            "--set {set}: expected {expected:?} in {err}"
        );
    }
    // A parent chart's globals reach every subchart: the schema lets them through.
    template(&["--set", "global.imageRegistry=registry.example.com"]);
}

#[test]
fn two_operators_never_reconcile_at_once_through_a_rollout() {
    let deployment = |set: &[&str]| {
        let mut args = Vec::new();
        for s in set {
            args.extend(["--set", s]);
        }
        kind(&docs(&template(&args)), "Deployment").clone()
    };
    let elects = |d: &Value| {
        d["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--leader-election")
    };
    // By default: the Lease, and a rolling update whose new pod stands by until it is Ready.
    let default = deployment(&[]);
    assert!(elects(&default), "leader election is the default");
    assert_eq!(default["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        default["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
        "the leader stays until its successor is Ready"
    );
    // Without the Lease, the old pod stops before the new one starts.
    let unelected = deployment(&["leaderElection=false"]);
    assert!(!elects(&unelected));
    assert_eq!(unelected["spec"]["strategy"]["type"], "Recreate");
    assert!(unelected["spec"]["strategy"]["rollingUpdate"].is_null());
    // Two replicas always elect, whatever leaderElection says.
    let two = deployment(&["leaderElection=false", "replicas=2"]);
    assert!(elects(&two));
    assert_eq!(two["spec"]["strategy"]["type"], "RollingUpdate");
}

#[test]
fn uninstall_releases_the_finalizers_with_rbac_of_its_own() {
    let hooks = |set: &[&str]| {
        let mut args = Vec::new();
        for s in set {
            args.extend(["--set", s]);
        }
        docs(&template(&args))
            .into_iter()
            .filter(|d| !d["metadata"]["annotations"]["helm.sh/hook"].is_null())
            .collect::<Vec<_>>()
    };
    let weight = |d: &Value| -> i64 {
        d["metadata"]["annotations"]["helm.sh/hook-weight"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let all = hooks(&[]);
    let job = kind(&all, "Job");
    assert_eq!(
        job["metadata"]["annotations"]["helm.sh/hook"],
        "post-delete"
    );
    let pod = &job["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["args"][0], "release-finalizers",
        "the operator binary's subcommand"
    );
    assert_eq!(container["image"], "ghcr.io/batchguard/batchguard:0.1.0");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let sa = pod["serviceAccountName"].as_str().unwrap();
    assert_ne!(sa, "bg-batchguard", "an identity of its own");
    for rbac in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"] {
        let object = kind(&all, rbac);
        assert_eq!(
            object["metadata"]["annotations"]["helm.sh/hook"], "post-delete",
            "{rbac}"
        );
        assert!(
            weight(object) < weight(job),
            "{rbac} exists before the Job runs"
        );
        assert!(
            object["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
                .as_str()
                .unwrap()
                .contains("hook-succeeded"),
            "{rbac} goes once done"
        );
    }
    assert_eq!(
        kind(&all, "ClusterRoleBinding")["subjects"][0]["name"],
        sa,
        "bound to the Job's identity"
    );
    let rules = &kind(&all, "ClusterRole")["rules"];
    assert_eq!(
        rules,
        &serde_json::json!([
            {"apiGroups": ["batchguard.dev"], "resources": ["batchruns"], "verbs": ["list", "patch"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "patch"]},
        ]),
        "exactly what releasing the finalizers needs"
    );

    // Watched namespaces: Roles there, and the command limited to them.
    let scoped = hooks(&["watchNamespaces={team-a,team-b}"]);
    let roles: Vec<&str> = scoped
        .iter()
        .filter(|d| d["kind"] == "Role")
        .map(|d| d["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["team-a", "team-b"]);
    assert!(!scoped.iter().any(|d| d["kind"] == "ClusterRole"));
    let args = kind(&scoped, "Job")["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert!(
        args.as_array()
            .unwrap()
            .contains(&"--namespace=team-a".into())
            && args
                .as_array()
                .unwrap()
                .contains(&"--namespace=team-b".into()),
        "{args}"
    );

    assert!(
        hooks(&["releaseFinalizersOnUninstall=false"]).is_empty(),
        "the hook can be turned off"
    );
}

#[test]
fn the_chart_ships_the_generated_crds() {
    for file in ["batchrun.yaml", "batchqueue.yaml"] {
        let chart = std::fs::read_to_string(format!("{CHART}/files/crds/{file}")).unwrap();
        let generated =
            std::fs::read_to_string(format!("{}/crds/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(
            chart == generated,
            "charts/batchguard/files/crds is stale: cp crds/{file} charts/batchguard/files/crds/"
        );
    }
    assert!(
        !Path::new(&format!("{CHART}/crds")).exists(),
        "no crds/ directory: Helm would install it once and never upgrade it"
    );
}

#[test]
fn the_chart_renders_its_crds_for_helm_upgrade_and_keeps_them() {
    let crds: Vec<Value> = docs(&template(&[]))
        .into_iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    let mut names: Vec<&str> = crds
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["batchqueues.batchguard.dev", "batchruns.batchguard.dev"]
    );
    for crd in &crds {
        let name = crd["metadata"]["name"].as_str().unwrap();
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{name} survives helm uninstall"
        );
        assert_eq!(
            crd["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "Helm"
        );
        let kind = name.split('.').next().unwrap().trim_end_matches('s');
        let generated: Value = serde_yaml::from_str(
            &std::fs::read_to_string(format!("{}/crds/{kind}.yaml", env!("CARGO_MANIFEST_DIR")))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            crd["spec"], generated["spec"],
            "{name}: the generated spec, unchanged"
        );
    }
    let without = docs(&template(&["--set", "crds.install=false"]));
    assert!(
        !without
            .iter()
            .any(|d| d["kind"] == "CustomResourceDefinition"),
        "crds.install=false renders no CRD"
    );
    let dropped = docs(&template(&["--set", "crds.keep=false"]));
    assert!(
        dropped
            .iter()
            .any(|d| d["kind"] == "CustomResourceDefinition"
                && d["metadata"]["annotations"]["helm.sh/resource-policy"].is_null())
    );
}

#[tokio::test]
async fn the_chart_rbac_runs_a_batch_run_and_nothing_more_and_uninstalls_cleanly() {
    let client = client().await;
    install_crd(&client).await;
    let operator_ns = TestNamespace::new(&client, "helm-op").await;
    let work = TestNamespace::new(&client, "helm-work").await;
    let release = "bg";
    // The CRDs are the cluster's, shared by every test: this release leaves them alone.
    let (ok, _, err) = helm(&[
        "install",
        release,
        CHART,
        "-n",
        &operator_ns.name,
        "--set",
        &format!("watchNamespaces={{{}}}", work.name),
        "--set",
        "crds.install=false",
        "--wait=false",
    ]);
    assert!(ok, "helm install: {err}");
    let sa = format!("system:serviceaccount:{}:bg-batchguard", operator_ns.name);

    // Run the operator out of cluster with exactly the chart's identity.
    let (ok, token, err) = kubectl(
        &[
            "create",
            "token",
            "bg-batchguard",
            "-n",
            &operator_ns.name,
            "--duration=1h",
        ],
        None,
    );
    assert!(ok, "token: {err}");
    let kubeconfig =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.kubeconfig", operator_ns.name));
    service_account_kubeconfig(token.trim(), &kubeconfig);
    let operator =
        Operator::start_with_env(&work.name, &[("KUBECONFIG", kubeconfig.to_str().unwrap())]);
    let runs: Api<BatchRun> = Api::namespaced(client.clone(), &work.name);
    runs.create(
        &PostParams::default(),
        &sim_run_500("rbac", r#"sim.batchguard.dev/duration: "1s""#, ""),
    )
    .await
    .unwrap();
    let run = wait_finished(&runs, "rbac", Duration::from_secs(120), &operator).await;
    let status = run.status.unwrap();
    assert_eq!(
        status.phase,
        Some(Phase::Succeeded),
        "the chart's RBAC is enough: {status:?}\n{}",
        operator.log_tail()
    );
    assert_eq!(status.aggregate.records, 500);
    assert!(
        !operator.log_tail().contains("forbidden"),
        "no request was refused:\n{}",
        operator.log_tail()
    );

    // ...and nothing more.
    for (verb, resource) in [
        ("get", "secrets"),
        ("list", "secrets"),
        ("delete", "nodes"),
        ("create", "deployments"),
    ] {
        let (_, answer, _) = kubectl(
            &[
                "auth", "can-i", verb, resource, "-n", &work.name, "--as", &sa,
            ],
            None,
        );
        assert_eq!(answer.trim(), "no", "{verb} {resource} must be denied");
    }
    let (_, answer, _) = kubectl(
        &[
            "auth",
            "can-i",
            "create",
            "jobs.batch",
            "-n",
            &work.name,
            "--as",
            &sa,
        ],
        None,
    );
    assert_eq!(answer.trim(), "yes");
    let (_, answer, _) = kubectl(
        &[
            "auth",
            "can-i",
            "create",
            "jobs.batch",
            "-n",
            "default",
            "--as",
            &sa,
        ],
        None,
    );
    assert_eq!(answer.trim(), "no", "only the watched namespace");
    let (ok, _, err) = kubectl(
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "get",
            "secrets",
            "-n",
            &work.name,
        ],
        None,
    );
    assert!(
        !ok && err.contains("Forbidden"),
        "reading a Secret with the operator's token: {err}"
    );
    drop(operator);

    // Upgrade with changed values.
    let (ok, _, err) = helm(&[
        "upgrade",
        release,
        CHART,
        "-n",
        &operator_ns.name,
        "--set",
        &format!("watchNamespaces={{{}}}", work.name),
        "--set",
        "crds.install=false",
        "--set",
        "replicas=2",
        "--set",
        "logFormat=text",
    ]);
    assert!(ok, "helm upgrade: {err}");
    let (_, deployment, _) = kubectl(
        &[
            "get",
            "deployment",
            "bg-batchguard",
            "-n",
            &operator_ns.name,
            "-o",
            "json",
        ],
        None,
    );
    let deployment: Value = serde_json::from_str(&deployment).unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--leader-election") && args.contains("--log-format=text"),
        "{args}"
    );
    let (_, answer, _) = kubectl(
        &[
            "auth",
            "can-i",
            "patch",
            "leases.coordination.k8s.io",
            "-n",
            &operator_ns.name,
            "--as",
            &sa,
        ],
        None,
    );
    assert_eq!(answer.trim(), "yes", "leader election may use its Lease");

    // Uninstall leaves nothing of the release but the CRD.
    let (ok, _, err) = helm(&["uninstall", release, "-n", &operator_ns.name, "--wait"]);
    assert!(ok, "helm uninstall: {err}");
    let selector = format!("app.kubernetes.io/instance={release}");
    for ns in [&operator_ns.name, &work.name] {
        let (_, left, _) = kubectl(
            &[
                "get",
                "deployments,services,serviceaccounts,roles,rolebindings",
                "-n",
                ns,
                "-l",
                &selector,
                "-o",
                "name",
            ],
            None,
        );
        assert_eq!(left.trim(), "", "left in {ns}: {left}");
    }
    let (_, crd, _) = kubectl(
        &["get", "crd", "batchruns.batchguard.dev", "-o", "name"],
        None,
    );
    assert_eq!(
        crd.trim(),
        "customresourcedefinition.apiextensions.k8s.io/batchruns.batchguard.dev"
    );
}

/// kstatus for custom resources: InProgress until the generation is observed or while
/// Reconciling=True, Failed when Stalled=True, Current otherwise.
fn kstatus(run: &Value) -> &'static str {
    let generation = run["metadata"]["generation"].as_i64();
    if run["status"]["observedGeneration"].as_i64() != generation {
        return "InProgress";
    }
    let condition = |type_: &str| {
        run["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == type_ && c["status"] == "True")
    };
    if condition("Reconciling") {
        "InProgress"
    } else if condition("Stalled") {
        "Failed"
    } else {
        "Current"
    }
}

/// A Lua table constructor for a JSON value.
fn lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua).collect::<Vec<_>>().join(",")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("[{k:?}]={}", lua(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// What Argo CD's health check says of an object: the script runs as Argo CD runs it, with
/// the object in the global `obj`, in an embedded Lua 5.1 (Argo CD's gopher-lua dialect).
fn argocd_health(run: &Value) -> (String, String) {
    let script = std::fs::read_to_string(format!("{CHART}/argocd/health.lua")).unwrap();
    let vm = mlua::Lua::new();
    vm.load(format!("obj = {}", lua(run)))
        .exec()
        .expect("the object as a Lua table");
    let hs: mlua::Table = vm
        .load(script)
        .set_name("argocd/health.lua")
        .eval()
        .unwrap_or_else(|e| panic!("health.lua failed: {e}"));
    (
        hs.get::<String>("status").unwrap(),
        hs.get::<Option<String>>("message")
            .unwrap()
            .unwrap_or_default(),
    )
}

#[test]
fn argocd_health_reads_every_state_of_a_run() {
    let condition = |type_: &str, status: &str, message: &str| serde_json::json!({"type": type_, "status": status, "reason": "R", "message": message});
    let run = |generation: i64, status: Value| {
        serde_json::json!({
            "apiVersion": "batchguard.dev/v1alpha1",
            "kind": "BatchRun",
            "metadata": {"name": "r", "generation": generation},
            "spec": {"suspend": false},
            "status": status,
        })
    };
    let cases = [
        (
            serde_json::json!({"metadata": {"name": "r"}}),
            "Progressing",
            "Waiting for the operator",
        ),
        (
            run(
                2,
                serde_json::json!({"observedGeneration": 1, "phase": "Running", "conditions": []}),
            ),
            "Progressing",
            "Waiting for the operator to observe the latest spec",
        ),
        (
            run(
                1,
                serde_json::json!({"observedGeneration": 1, "phase": "Running",
                    "conditions": [condition("Reconciling", "True", "3 batches running")]}),
            ),
            "Progressing",
            "3 batches running",
        ),
        (
            run(
                1,
                serde_json::json!({"observedGeneration": 1, "phase": "Succeeded",
                    "conditions": [condition("Complete", "True", "all 500 records done")]}),
            ),
            "Healthy",
            "all 500 records done",
        ),
        (
            run(
                1,
                serde_json::json!({"observedGeneration": 1, "phase": "Failed",
                    "conditions": [condition("Stalled", "True", "1 range failed")]}),
            ),
            "Degraded",
            "1 range failed",
        ),
        (
            run(
                1,
                serde_json::json!({"observedGeneration": 1, "phase": "Suspended", "conditions": []}),
            ),
            "Suspended",
            "spec.suspend holds new batches",
        ),
    ];
    for (object, status, message) in cases {
        assert_eq!(
            argocd_health(&object),
            (status.to_string(), message.to_string()),
            "{object}"
        );
    }
}

#[tokio::test]
async fn kstatus_argocd_health_and_reapplies_read_the_run_right() {
    let Setup {
        client: _,
        ns,
        operator,
        runs,
    } = Setup::new("gitops").await;
    runs.create(
        &PostParams::default(),
        &sim_run_500("long", r#"sim.batchguard.dev/duration: "5m""#, ""),
    )
    .await
    .unwrap();
    runs.create(
        &PostParams::default(),
        &sim_run_500("quick", r#"sim.batchguard.dev/duration: "1s""#, ""),
    )
    .await
    .unwrap();
    let broken = r#"sim.batchguard.dev/fail-ranges: "0""#;
    runs.create(
        &PostParams::default(),
        &sim_run_500("broken", broken, "  retry: {maxAttempts: 1}"),
    )
    .await
    .unwrap();
    wait_finished(&runs, "quick", Duration::from_secs(90), &operator).await;
    wait_finished(&runs, "broken", Duration::from_secs(90), &operator).await;
    wait_for(
        "the long run to be Running",
        Duration::from_secs(30),
        || async {
            (runs.get("long").await.ok()?.status?.phase == Some(Phase::Running)).then_some(())
        },
    )
    .await;
    let json = |name: &str| {
        let (ok, out, err) = kubectl(
            &["get", "batchrun", name, "-n", &ns.name, "-o", "json"],
            None,
        );
        assert!(ok, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    for (name, expected_kstatus, expected_health) in [
        ("long", "InProgress", "Progressing"),
        ("quick", "Current", "Healthy"),
        ("broken", "Failed", "Degraded"),
    ] {
        let run = json(name);
        assert_eq!(kstatus(&run), expected_kstatus, "{name}: {}", run["status"]);
        assert_eq!(argocd_health(&run).0, expected_health, "{name}");
    }

    // GitOps: applying the same manifest again changes nothing, client- or server-side.
    let manifest = serde_yaml::to_string(&sim_run_500(
        "quick",
        r#"sim.batchguard.dev/duration: "1s""#,
        "",
    ))
    .unwrap();
    let before = json("quick");
    for args in [
        vec!["apply", "-n", &ns.name, "-f", "-"],
        vec![
            "apply",
            "--server-side",
            "--force-conflicts",
            "-n",
            &ns.name,
            "-f",
            "-",
        ],
    ] {
        for _ in 0..2 {
            let (ok, _, err) = kubectl(&args, Some(&manifest));
            assert!(ok, "{err}");
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = json("quick");
    assert_eq!(
        after["metadata"]["generation"], before["metadata"]["generation"],
        "no spec drift"
    );
    assert_eq!(after["status"], before["status"], "no status churn");
    assert_eq!(after["spec"], before["spec"]);
}

/// The chart's values that run the operator image of the local cluster's real node (a real
/// container, so readiness, rollouts and hooks are real), watching `work`, plus `extra`.
fn real_node_values(node: &RealNode, work: &str, extra: &str) -> std::path::PathBuf {
    let (repository, tag) = node
        .operator_image
        .rsplit_once(':')
        .expect("an image reference with a tag");
    let values = format!(
        r#"
image: {{repository: "{repository}", tag: "{tag}", pullPolicy: Never}}
crds: {{install: false}}
watchNamespaces: ["{work}"]
logFormat: text
logLevel: "info,batchguard=debug"
nodeSelector: {{batchguard.dev/real-node: "true"}}
tolerations: [{{key: batchguard.dev/real-node, operator: Exists, effect: NoSchedule}}]
{extra}
"#
    );
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{work}-values.yaml"));
    std::fs::write(&file, values).unwrap();
    file
}

/// The operator pods of a release that are running, with whether each reconciles (its
/// `batchguard_leading` gauge, read through the API server's pod proxy); `None` when a pod's
/// metrics cannot be read (it is starting or stopping).
fn leading_pods(namespace: &str, release: &str) -> Vec<(String, Option<bool>)> {
    let (ok, out, _) = kubectl(
        &[
            "get",
            "pods",
            "-n",
            namespace,
            "-l",
            &format!("app.kubernetes.io/instance={release},!app.kubernetes.io/component"),
            "--field-selector=status.phase=Running",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
        None,
    );
    if !ok {
        return Vec::new();
    }
    out.split_whitespace()
        .map(|pod| {
            let (ok, metrics, _) = kubectl(
                &[
                    "get",
                    "--raw",
                    &format!("/api/v1/namespaces/{namespace}/pods/{pod}:8080/proxy/metrics"),
                ],
                None,
            );
            let leading = metrics
                .lines()
                .find_map(|l| l.strip_prefix("batchguard_leading "))
                .map(|v| v.trim() == "1");
            (pod.to_string(), if ok { leading } else { None })
        })
        .collect()
}

#[tokio::test]
async fn a_helm_upgrade_rolls_elected_replicas_with_one_leader_at_a_time() {
    let node = RealNode::from_env();
    let client = client().await;
    install_crd(&client).await;
    let system = TestNamespace::new(&client, "roll-op").await;
    let work = TestNamespace::new(&client, "roll-work").await;
    let release = "roll";
    let values = real_node_values(&node, &work.name, "replicas: 2");
    // Both replicas Ready: the standby too, or `--wait` (and every rollout) never ends.
    let (ok, out, err) = helm(&[
        "install",
        release,
        CHART,
        "-n",
        &system.name,
        "-f",
        values.to_str().unwrap(),
        "--wait",
        "--timeout",
        "120s",
    ]);
    let describe = || {
        kubectl(
            &[
                "describe",
                "pods",
                "-n",
                &system.name,
                "-l",
                &format!("app.kubernetes.io/instance={release}"),
            ],
            None,
        )
        .1
    };
    assert!(ok, "helm install --wait: {out}{err}\n{}", describe());

    // A run that lives through the rollout finishes with the exact aggregate.
    let runs: Api<BatchRun> = Api::namespaced(client.clone(), &work.name);
    runs.create(
        &PostParams::default(),
        &sim_run(
            "rolled",
            2000,
            100,
            2,
            r#"sim.batchguard.dev/duration: "2s""#,
            "",
        ),
    )
    .await
    .unwrap();

    // Sample who reconciles all through the rollout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let namespace = system.name.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                samples.push(leading_pods(&namespace, release));
                std::thread::sleep(Duration::from_millis(300));
            }
            samples
        })
    };
    let (ok, out, err) = helm(&[
        "upgrade",
        release,
        CHART,
        "-n",
        &system.name,
        "-f",
        values.to_str().unwrap(),
        "--set",
        "podAnnotations.rollout=second",
    ]);
    assert!(ok, "helm upgrade: {out}{err}");
    let (ok, out, err) = kubectl(
        &[
            "rollout",
            "status",
            &format!("deployment/{release}-batchguard"),
            "-n",
            &system.name,
            "--timeout=180s",
        ],
        None,
    );
    assert!(
        ok,
        "the rollout did not complete: {out}{err}\n{}",
        describe()
    );
    // Past the rollout, until a leader of the new pods reconciles: at most a lease time or two
    // after the old leader stopped (a standby looks again when the lease it saw would expire).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let leader = loop {
        let pods = leading_pods(&system.name, release);
        let leaders: Vec<&String> = pods
            .iter()
            .filter(|(_, l)| *l == Some(true))
            .map(|(p, _)| p)
            .collect();
        if pods.len() == 2 && leaders.len() == 1 {
            break leaders[0].clone();
        }
        if std::time::Instant::now() > deadline {
            let (_, lease, _) = kubectl(&["get", "leases", "-n", &system.name, "-o", "yaml"], None);
            panic!(
                "no single leader among the new pods after 120 s: {pods:?}\n{lease}\n{}",
                describe()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.join().unwrap();

    let both: Vec<_> = samples
        .iter()
        .filter(|s| s.iter().filter(|(_, l)| *l == Some(true)).count() > 1)
        .collect();
    assert!(
        both.is_empty(),
        "two pods reconciled at once: {both:?}\n(of {} samples)",
        samples.len()
    );
    let pods_seen: std::collections::BTreeSet<&String> =
        samples.iter().flatten().map(|(p, _)| p).collect();
    assert!(
        pods_seen.len() >= 3 && samples.len() >= 5,
        "the sampler saw the rollout: {} samples of {pods_seen:?}",
        samples.len()
    );
    let (_, holder, _) = kubectl(
        &[
            "get",
            "lease",
            "batchguard-leader",
            "-n",
            &system.name,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    );
    assert_eq!(holder, leader, "the Lease names the pod that reconciles");

    let operator_log = || kubectl(&["logs", "-n", &system.name, &leader, "--tail=40"], None).1;
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let run = loop {
        let run = runs.get("rolled").await.unwrap();
        if let Some(Phase::Succeeded | Phase::Failed) = run.status.as_ref().and_then(|s| s.phase) {
            break run;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not finish: {:?}\n{}",
            run.status,
            operator_log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let status = run.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    assert_eq!(status.aggregate.records, 2000, "every record counted once");
    assert_eq!(status.aggregate.outputs.count, 20);

    let (ok, _, err) = helm(&["uninstall", release, "-n", &system.name, "--wait"]);
    assert!(ok, "helm uninstall: {err}");
}

#[tokio::test]
async fn helm_uninstall_releases_the_finalizers_so_the_namespace_goes() {
    use batchguard::api::labels::{CLEANUP_FINALIZER, RESULT_FINALIZER};
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use kube::ResourceExt;
    use kube::api::{DeleteParams, ListParams};

    let node = RealNode::from_env();
    let client = client().await;
    install_crd(&client).await;
    let system = TestNamespace::new(&client, "uninstall-op").await;
    let work = TestNamespace::new(&client, "uninstall-work").await;
    let release = "gone";
    let values = real_node_values(&node, &work.name, "");
    let (ok, out, err) = helm(&[
        "install",
        release,
        CHART,
        "-n",
        &system.name,
        "-f",
        values.to_str().unwrap(),
        "--wait",
        "--timeout",
        "120s",
    ]);
    assert!(ok, "helm install: {out}{err}");

    // A run in flight: it holds the cleanup finalizer, its worker pods the result finalizer.
    let runs: Api<BatchRun> = Api::namespaced(client.clone(), &work.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &work.name);
    runs.create(
        &PostParams::default(),
        &sim_run(
            "inflight",
            400,
            100,
            2,
            r#"sim.batchguard.dev/duration: "5m""#,
            "",
        ),
    )
    .await
    .unwrap();
    let holders = || async {
        let run = runs.get_opt("inflight").await.ok()??;
        let pods = pods
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .iter()
            .filter(|p| p.finalizers().iter().any(|f| f == RESULT_FINALIZER))
            .count();
        Some((
            run.finalizers().iter().any(|f| f == CLEANUP_FINALIZER),
            pods,
        ))
    };
    wait_for(
        "the run and two worker pods to hold the finalizers",
        Duration::from_secs(90),
        || async { (holders().await? == (true, 2)).then_some(()) },
    )
    .await;

    let (ok, out, err) = helm(&[
        "uninstall",
        release,
        "-n",
        &system.name,
        "--wait",
        "--timeout",
        "120s",
    ]);
    assert!(ok, "helm uninstall (and its hook): {out}{err}");
    assert_eq!(
        holders().await,
        Some((false, 0)),
        "the hook released every finalizer"
    );
    let (_, left, _) = kubectl(
        &[
            "get",
            "jobs,serviceaccounts,clusterroles,clusterrolebindings,roles,rolebindings",
            "-A",
            "-l",
            &format!("app.kubernetes.io/instance={release}"),
            "-o",
            "name",
        ],
        None,
    );
    assert_eq!(left.trim(), "", "the hook and its RBAC are gone: {left}");

    // Deleting the namespace (its run, its pods) now finishes without an operator.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&work.name, &DeleteParams::background())
        .await
        .unwrap();
    wait_namespace_gone(&client, &work.name, Duration::from_secs(60)).await;
}
