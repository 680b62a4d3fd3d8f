//! The chart as an artifact: `helm package` makes the archive a chart repository serves; the
//! archive lints, renders for the oldest and newest Kubernetes it supports and refuses an
//! older one, carries its Artifact Hub metadata, and installs, shows working NOTES, upgrades
//! and uninstalls on the local cluster. And the CRD lifecycle: a release of the previous chart
//! (CRDs in crds/, which Helm never upgrades) upgraded to this one takes the CRDs over,
//! updates their schema, keeps them on uninstall, and keeps the BatchRuns through it all.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use support::*;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/batchguard");

/// Runs helm; its stdout, or what it said on stderr.
fn run_helm(args: &[&str]) -> Result<String, String> {
    let out = Command::new("helm")
        .args(args)
        .output()
        .expect("helm on PATH (tests/cluster/up puts it there)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "helm {}: {stdout}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A fresh, empty directory for this test under the target's tmp dir.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `helm package` of the chart: the path of the archive.
fn package() -> PathBuf {
    let dir = scratch("package");
    let out = run_helm(&["package", CHART, "-d", dir.to_str().unwrap()]).unwrap();
    let chart = chart_yaml();
    let archive = dir.join(format!(
        "batchguard-{}.tgz",
        chart["version"].as_str().unwrap()
    ));
    assert!(
        out.contains(archive.to_str().unwrap()),
        "helm package wrote {out}, not {archive:?}"
    );
    archive
}

fn chart_yaml() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(format!("{CHART}/Chart.yaml")).unwrap()).unwrap()
}

fn docs(rendered: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(rendered)
        .filter_map(|doc| Value::deserialize(doc).ok())
        .filter(|doc| !doc.is_null())
        .collect()
}

/// An Artifact Hub annotation, which holds YAML in a string.
fn annotation(chart: &Value, key: &str) -> Value {
    let text = chart["annotations"][key]
        .as_str()
        .unwrap_or_else(|| panic!("Chart.yaml has no annotation {key}"));
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{key} is not YAML: {e}"))
}

#[test]
fn the_packaged_chart_lints_renders_and_describes_itself() {
    let archive = package();
    let archive = archive.to_str().unwrap();
    run_helm(&["lint", "--strict", archive]).unwrap();

    // kubeVersion: ">=1.30.0-0" — the oldest supported and the cluster's own render; older fails.
    for version in ["1.30.0", "1.37.2"] {
        let rendered = run_helm(&["template", "bg", archive, "--kube-version", version]).unwrap();
        assert!(rendered.contains("kind: Deployment"), "{version}");
    }
    let err = run_helm(&["template", "bg", archive, "--kube-version", "1.29.9"]).unwrap_err();
    assert!(err.contains("chart requires kubeVersion"), "{err}");

    // The archive's metadata is the source's, and says what Artifact Hub shows.
    let shown: Value =
        serde_yaml::from_str(&run_helm(&["show", "chart", archive]).unwrap()).unwrap();
    let chart = chart_yaml();
    assert_eq!(shown, chart);
    assert_eq!(
        chart["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "the chart installs this operator version"
    );
    assert_eq!(
        annotation(&chart, "artifacthub.io/license"),
        env!("CARGO_PKG_LICENSE")
    );
    let images = annotation(&chart, "artifacthub.io/images");
    assert_eq!(
        images[0]["image"],
        format!(
            "ghcr.io/batchguard/batchguard:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    let rendered =
        docs(&run_helm(&["template", "bg", archive, "--kube-version", "1.37.2"]).unwrap());
    let mut shipped: Vec<(String, String, String)> = rendered
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .map(|crd| {
            (
                crd["metadata"]["name"].as_str().unwrap().to_string(),
                crd["spec"]["names"]["kind"].as_str().unwrap().to_string(),
                crd["spec"]["versions"][0]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    let mut listed: Vec<(String, String, String)> = annotation(&chart, "artifacthub.io/crds")
        .as_array()
        .unwrap()
        .iter()
        .map(|crd| {
            (
                crd["name"].as_str().unwrap().to_string(),
                crd["kind"].as_str().unwrap().to_string(),
                crd["version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    shipped.sort();
    listed.sort();
    assert_eq!(
        listed, shipped,
        "artifacthub.io/crds lists exactly the CRDs shipped"
    );
    for link in annotation(&chart, "artifacthub.io/links")
        .as_array()
        .unwrap()
    {
        let url = link["url"].as_str().unwrap();
        if let Some(path) = url.split("/blob/main/").nth(1) {
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(path).exists(),
                "link {url} points at a file that does not exist"
            );
        }
    }
}

/// The first BatchRun NOTES.txt offers, as the user would paste it.
fn notes_manifest(notes: &str) -> String {
    let start = notes.find("<<'YAML'\n").expect("a heredoc in NOTES") + "<<'YAML'\n".len();
    let len = notes[start..].find("\nYAML\n").expect("the heredoc ends");
    notes[start..start + len].to_string()
}

#[tokio::test]
async fn the_packaged_chart_installs_upgrades_and_uninstalls() {
    let client = client().await;
    install_crd(&client).await;
    let archive = package();
    let archive = archive.to_str().unwrap();
    let ns = TestNamespace::new(&client, "ship-pkg").await;
    let release = "ship-pkg";

    // The cluster's CRDs are shared by every test: this release leaves them alone.
    run_helm(&[
        "install",
        release,
        archive,
        "-n",
        &ns.name,
        "--set",
        &format!("watchNamespaces={{{}}}", ns.name),
        "--set",
        "crds.install=false",
        "--wait=false",
    ])
    .unwrap();
    let (ok, _, err) = kubectl(
        &["get", "deployment", "ship-pkg-batchguard", "-n", &ns.name],
        None,
    );
    assert!(ok, "the Deployment exists: {err}");

    // NOTES work: no placeholder, and the BatchRun they offer is valid for this cluster.
    let notes = run_helm(&["get", "notes", release, "-n", &ns.name]).unwrap();
    assert!(
        !notes.contains('…') && !notes.contains("https://"),
        "{notes}"
    );
    assert!(
        notes.contains(&format!("kubectl apply -n {} -f -", ns.name)),
        "{notes}"
    );
    let manifest = notes_manifest(&notes);
    let (ok, out, err) = kubectl(
        &["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"],
        Some(&manifest),
    );
    assert!(ok, "the NOTES' BatchRun is refused: {err}\n{manifest}");
    assert!(
        out.contains("batchrun.batchguard.dev/hello-batchguard created"),
        "{out}"
    );

    // So are Artifact Hub's examples.
    for example in annotation(&chart_yaml(), "artifacthub.io/crdsExamples")
        .as_array()
        .unwrap()
    {
        let (ok, _, err) = kubectl(
            &["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"],
            Some(&serde_json::to_string(example).unwrap()),
        );
        assert!(ok, "crdsExamples {}: {err}", example["kind"]);
    }

    run_helm(&[
        "upgrade",
        release,
        archive,
        "-n",
        &ns.name,
        "--reuse-values",
        "--set",
        "podLabels.team=data",
    ])
    .unwrap();
    let (_, labels, _) = kubectl(
        &[
            "get",
            "deployment",
            "ship-pkg-batchguard",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.spec.template.metadata.labels.team}",
        ],
        None,
    );
    assert_eq!(labels, "data");

    run_helm(&["uninstall", release, "-n", &ns.name, "--wait"]).unwrap();
    let (_, left, _) = kubectl(
        &[
            "get",
            "deployments,services,serviceaccounts,roles,rolebindings",
            "-n",
            &ns.name,
            "-l",
            &format!("app.kubernetes.io/instance={release}"),
            "-o",
            "name",
        ],
        None,
    );
    assert_eq!(left.trim(), "", "left behind: {left}");
}

/// A copy of a chart under its own API group and short names, so that an upgrade test can own
/// its CRDs without touching the cluster's, which the other tests use at the same time.
fn regroup(chart: &Path, group: &str) {
    for entry in walk(chart) {
        let Ok(text) = std::fs::read_to_string(&entry) else {
            continue;
        };
        let text = text
            .replace("batchguard.dev", group)
            .replace("shortNames:\n    - br\n", "shortNames:\n    - upgradebr\n")
            .replace("shortNames:\n    - bq\n", "shortNames:\n    - upgradebq\n");
        std::fs::write(&entry, text).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Untars an archive (the previous chart's fixture, or the packaged one) into `dir`.
fn untar(archive: &[u8], gzip: bool, dir: &Path) {
    use std::io::Write;
    let mut tar = Command::new("tar")
        .args([
            if gzip { "-xmzf" } else { "-xmf" },
            "-",
            "-C",
            dir.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("tar");
    tar.stdin.take().unwrap().write_all(archive).unwrap();
    assert!(tar.wait().unwrap().success());
}

fn crd_json(name: &str) -> Option<Value> {
    let (ok, out, _) = kubectl(&["get", "crd", name, "-o", "json"], None);
    ok.then(|| serde_json::from_str(&out).unwrap())
}

#[tokio::test]
async fn a_release_of_the_previous_chart_upgrades_its_crds_and_keeps_the_runs() {
    const GROUP: &str = "ship-upgrade.batchguard.dev";
    let runs_crd = format!("batchruns.{GROUP}");
    let queues_crd = format!("batchqueues.{GROUP}");
    let client = client().await;
    // Left over from an interrupted run of this test.
    for crd in [&runs_crd, &queues_crd] {
        let _ = kubectl(
            &["delete", "crd", crd, "--ignore-not-found", "--wait"],
            None,
        );
    }
    let ns = TestNamespace::new(&client, "ship-upgrade").await;
    // Unique, since the previous chart's ClusterRole is named after the release.
    let release = ns.name.as_str();

    // The previous chart (0.1.0, CRDs in crds/): `git archive 77f5e25 charts/batchguard`, kept
    // as a fixture so the test also runs in a shallow clone.
    let old = scratch("previous-chart");
    let archive = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/chart-batchguard-0.1.0.tar.gz"
    );
    untar(
        &std::fs::read(archive).expect("the previous chart's fixture"),
        true,
        &old,
    );
    let old_chart = old.join("charts/batchguard");
    assert!(
        old_chart.join("crds/batchrun.yaml").exists(),
        "chart 0.1.0 kept its CRD in crds/"
    );
    regroup(&old_chart, GROUP);

    // This chart, as packaged.
    let new = scratch("this-chart");
    untar(&std::fs::read(package()).unwrap(), true, &new);
    let new_chart = new.join("batchguard");
    regroup(&new_chart, GROUP);

    let install = |chart: &Path, extra: &[&str]| {
        let mut args = vec![
            "upgrade",
            "--install",
            release,
            chart.to_str().unwrap(),
            "-n",
            &ns.name,
            "--set",
            "replicas=0",
            "--wait=false",
        ];
        args.extend_from_slice(extra);
        run_helm(&args)
    };
    install(&old_chart, &[]).unwrap();
    let established = |name: String| async move {
        wait_for(
            &format!("{name} to be established"),
            Duration::from_secs(30),
            || {
                let name = name.clone();
                async move {
                    let crd = crd_json(&name)?;
                    crd["status"]["conditions"]
                        .as_array()?
                        .iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                        .then_some(())
                }
            },
        )
        .await
    };
    established(runs_crd.clone()).await;
    assert!(
        crd_json(&queues_crd).is_none(),
        "chart 0.1.0 had no BatchQueue"
    );

    let run = |name: &str, extra: &str| {
        format!(
            "apiVersion: {GROUP}/v1alpha1\nkind: BatchRun\nmetadata: {{name: {name}}}\nspec:\n  \
             input: {{range: {{start: 0, end: 1000}}, batchSize: 100}}\n  parallelism: 2\n  \
             resources: {{memory: {{request: 16Mi, limit: 32Mi}}}}\n  \
             template: {{spec: {{containers: [{{name: worker, image: busybox}}]}}}}\n{extra}"
        )
    };
    let apply = |manifest: &str| kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(manifest));
    for name in ["kept-1", "kept-2"] {
        let (ok, _, err) = apply(&run(name, ""));
        assert!(ok, "a run under chart 0.1.0's CRD: {err}");
    }
    let get = |name: &str| {
        let (ok, out, err) = kubectl(
            &[
                "get",
                &format!("batchruns.{GROUP}"),
                name,
                "-n",
                &ns.name,
                "-o",
                "json",
            ],
            None,
        );
        assert!(ok, "{name}: {err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let before: Vec<Value> = ["kept-1", "kept-2"].iter().map(|n| get(n)).collect();
    let (ok, _, err) = apply(&run("queued", "  queue: month-end\n"));
    assert!(!ok, "chart 0.1.0's CRD knows no spec.queue");
    assert!(err.contains("queue"), "{err}");

    // Helm never took the crds/ CRD as the release's: a plain upgrade refuses to adopt it...
    let err = install(&new_chart, &[]).unwrap_err();
    assert!(
        err.contains("exists and cannot be imported into the current release"),
        "{err}"
    );
    // ...and --take-ownership, as docs/crds.md says, does.
    install(&new_chart, &["--take-ownership"]).unwrap();
    established(queues_crd.clone()).await;
    let crd = crd_json(&runs_crd).unwrap();
    assert_eq!(
        crd["metadata"]["annotations"]["meta.helm.sh/release-name"],
        release
    );
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    wait_for(
        "the new schema to be served",
        Duration::from_secs(30),
        || async {
            let (ok, _, _) = apply(&run("queued", "  queue: month-end\n"));
            ok.then_some(())
        },
    )
    .await;
    assert_eq!(get("queued")["spec"]["queue"], "month-end");

    // The runs made under the old CRD are there, unchanged, and still writable. Fields the
    // new schema added appear with their defaults (the apiserver defaults on read), and
    // nothing else changed.
    let added = [
        ("/startTimeoutSeconds", json!(120)),
        ("/memoryGuard/onOOM", json!("Split")),
    ];
    for old in &before {
        let name = old["metadata"]["name"].as_str().unwrap();
        let now = get(name);
        assert_eq!(now["metadata"]["uid"], old["metadata"]["uid"], "{name}");
        let mut spec = now["spec"].clone();
        for (path, default) in &added {
            assert_eq!(spec.pointer(path), Some(default), "{name}: {path}");
            let (parent, key) = path.rsplit_once('/').unwrap();
            let parent = if parent.is_empty() {
                Some(&mut spec)
            } else {
                spec.pointer_mut(parent)
            };
            parent.unwrap().as_object_mut().unwrap().remove(key);
        }
        assert_eq!(spec, old["spec"], "{name}");
        let (ok, _, err) = kubectl(
            &[
                "annotate",
                &format!("batchruns.{GROUP}/{name}"),
                "-n",
                &ns.name,
                "upgraded=yes",
            ],
            None,
        );
        assert!(ok, "{name} passes the new schema: {err}");
    }

    // Later upgrades need nothing special.
    install(&new_chart, &["--set", "logFormat=text"]).unwrap();

    // Uninstall keeps the CRDs and so the runs.
    run_helm(&["uninstall", release, "-n", &ns.name, "--wait"]).unwrap();
    assert!(crd_json(&runs_crd).is_some() && crd_json(&queues_crd).is_some());
    for name in ["kept-1", "kept-2", "queued"] {
        get(name);
    }

    for crd in [&runs_crd, &queues_crd] {
        let _ = kubectl(&["delete", "crd", crd, "--wait"], None);
    }
}
