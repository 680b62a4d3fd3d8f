//! The memory guard against the real cluster and Prometheus: a worker near its limit is
//! drained and its rest continues, batches shrink after a memory-hungry one, and a guard that
//! cannot reach Prometheus says so, acts on nothing, and recovers by itself. A guard that
//! cannot be fooled: each worker is measured against its own limit and container whatever the
//! run's spec says now, old samples from a slow scrape still count, a blind guard's message
//! stays short, a denied or interrupted drain is finished later, and one query per poll
//! measures every run.
//!
//! Worker memory is kwok's simulation (tests/cluster/README.md): `sim.batchguard.dev/memory`
//! for a fixed value, `memory-growth` per second, `memory-attempts` to grow only on early
//! attempts, `resume-after` for the checkpoint a drained worker reports.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use batchguard::api::{BatchRun, Phase};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
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

/// A Prometheus proxy that can make samples look old and queries slow: for each query it is
/// given the request target and body and answers (how many seconds in the future the query is
/// evaluated, so the newest sample looks that old; how long to hold the query).
async fn prometheus_proxy<F>(behave: F) -> String
where
    F: Fn(&str) -> (u64, Duration) + Send + Sync + 'static,
{
    let target = std::env::var("PROMETHEUS_URL").expect("PROMETHEUS_URL from tests/cluster/up");
    let target = target
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let behave = Arc::new(behave);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((inbound, _)) = listener.accept().await else {
                continue;
            };
            let (target, behave) = (target.clone(), behave.clone());
            tokio::spawn(async move {
                let _ = forward(inbound, &target, behave.as_ref()).await;
            });
        }
    });
    format!("http://{address}")
}

/// One request (the guard's are POSTs with the query in a form body), answered on a
/// connection of its own.
async fn forward(
    mut inbound: tokio::net::TcpStream,
    target: &str,
    behave: &(dyn Fn(&str) -> (u64, Duration) + Send + Sync),
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = inbound.read(&mut buffer).await?;
        if n == 0 || received.len() > 1 << 20 {
            return Ok(());
        }
        received.extend_from_slice(&buffer[..n]);
    };
    let text = String::from_utf8_lossy(&received[..head_end]).into_owned();
    let mut body = received[head_end + 4..].to_vec();
    let (line, rest) = text.split_once("\r\n").unwrap_or((&text, ""));
    let length: usize = rest
        .split("\r\n")
        .filter_map(|h| h.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    while body.len() < length {
        let n = inbound.read(&mut buffer).await?;
        if n == 0 {
            return Ok(());
        }
        body.extend_from_slice(&buffer[..n]);
    }
    let mut parts = line.splitn(3, ' ');
    let (method, path, version) = (
        parts.next().unwrap_or("GET"),
        parts.next().unwrap_or("/"),
        parts.next().unwrap_or("HTTP/1.1"),
    );
    let (lag, delay) = behave(&format!("{path} {}", String::from_utf8_lossy(&body)));
    // Prometheus reads `time` from the URL as well as from a POST form.
    let instant_query = path == "/api/v1/query" || path.starts_with("/api/v1/query?");
    let path = if lag > 0 && instant_query {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let join = if path.contains('?') { '&' } else { '?' };
        format!("{path}{join}time={:.3}", now + lag as f64)
    } else {
        path.to_string()
    };
    tokio::time::sleep(delay).await;
    let headers: String = rest
        .split("\r\n")
        .filter(|h| !h.is_empty() && !h.to_ascii_lowercase().starts_with("connection:"))
        .map(|h| format!("{h}\r\n"))
        .collect();
    let mut outbound = tokio::net::TcpStream::connect(target).await?;
    outbound
        .write_all(
            format!("{method} {path} {version}\r\n{headers}Connection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    outbound.write_all(&body[..length.min(body.len())]).await?;
    let mut response = Vec::new();
    outbound.read_to_end(&mut response).await?;
    inbound.write_all(&response).await?;
    inbound.shutdown().await
}

/// The run's worker pods (by the `batchguard.dev/run` label).
async fn pods_of(client: &kube::Client, namespace: &str, run: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("batchguard.dev/run={run}");
    pods.list(&ListParams::default().labels(&selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Waits until `count` worker pods of the run are Running.
async fn wait_running(client: &kube::Client, namespace: &str, run: &str, count: usize) -> Vec<Pod> {
    wait_for(
        &format!("{count} running workers of {run}"),
        Duration::from_secs(30),
        || async {
            let pods = pods_of(client, namespace, run).await;
            let running: Vec<Pod> = pods
                .into_iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .collect();
            (running.len() >= count).then_some(running)
        },
    )
    .await
}

/// Runs two batches whose first attempts grow 16Mi/s (85% of 128Mi after about 7s, 85% of
/// 1Gi never within their 15s) and checkpoint 50 records when drained; once both workers run,
/// `change` is merged into the run's spec. Returns the finished run.
async fn change_mid_run(setup: &Setup, mut run: BatchRun, change: serde_json::Value) -> BatchRun {
    let name = run.metadata.name.clone().unwrap();
    let annotations = [
        ("sim.batchguard.dev/duration", "15s"),
        ("sim.batchguard.dev/memory-growth", "16Mi"),
        ("sim.batchguard.dev/memory-attempts", "1"),
        ("sim.batchguard.dev/resume-after", "50"),
    ];
    let meta = run
        .spec
        .template
        .metadata
        .get_or_insert_with(Default::default);
    meta.annotations
        .get_or_insert_with(Default::default)
        .extend(annotations.map(|(k, v)| (k.to_string(), v.to_string())));
    setup
        .runs
        .create(&PostParams::default(), &run)
        .await
        .unwrap();
    wait_running(&setup.client, &setup.ns.name, &name, 2).await;
    setup
        .runs
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": change })),
        )
        .await
        .unwrap();
    wait_finished(&setup.runs, &name, Duration::from_secs(90), &setup.operator).await
}

const DRAIN_AND_RESUME: &str =
    "{threshold: 85, action: Drain, drainGracePeriodSeconds: 2, onPressure: Resume}";

#[tokio::test]
async fn a_limit_raised_mid_run_does_not_hide_the_workers_started_under_the_old_one() {
    let setup = Setup::new("oldlimit").await;
    let run = guarded("raised", 200, 100, "", DRAIN_AND_RESUME);
    let change = serde_json::json!({"resources": {"memory": {"limit": "1Gi"}}});
    let status = change_mid_run(&setup, run, change).await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    assert_eq!(
        status.guard.drains, 2,
        "the old workers are measured against the 128Mi they run with: {:?}",
        status.guard
    );
    assert_eq!(status.aggregate.records, 200);
    let drained = event_notes(&setup.client, &setup.ns.name, "Drained").await;
    assert!(
        drained.iter().all(|n| n.contains("of its 128Mi limit")),
        "{drained:?}"
    );
}

#[tokio::test]
async fn a_worker_renamed_mid_run_is_still_guarded_and_read() {
    let setup = Setup::new("renamed").await;
    let mut run = guarded("renamed", 200, 100, "", DRAIN_AND_RESUME);
    run.spec.template.spec.as_mut().unwrap().containers[0].name = "main".into();
    // The template now calls the worker `worker`; the running pods' worker is still `main`.
    let change = serde_json::json!({"template": {"spec": {"containers": [
        {"name": "worker", "image": "registry.example/etl:2"}
    ]}}});
    let status = change_mid_run(&setup, run, change).await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    assert_eq!(status.guard.drains, 2, "{:?}", status.guard);
    assert!(
        status.failures.is_empty(),
        "the drained workers' reports are read from `main`: {:?}",
        status.failures
    );
    assert_eq!(status.aggregate.records, 200);
    assert!(
        event_notes(&setup.client, &setup.ns.name, "GuardBlind")
            .await
            .is_empty(),
        "the guard never lost sight of the old workers"
    );
}

#[tokio::test]
async fn a_scrape_slower_than_the_poll_does_not_blind_the_guard() {
    // Every sample the guard reads is 45s old, as with a 30s or 60s scrape.
    let url = prometheus_proxy(|_| (45, Duration::ZERO)).await;
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::with_env("slowscrape", &[("PROMETHEUS_URL", &url)]).await;
    let annotations = r#"sim.batchguard.dev/duration: "30s", sim.batchguard.dev/memory: "120Mi", sim.batchguard.dev/memory-attempts: "1""#;
    runs.create(
        &PostParams::default(),
        &guarded(
            "scraped",
            200,
            100,
            annotations,
            "{threshold: 85, action: Drain, drainGracePeriodSeconds: 2}",
        ),
    )
    .await
    .unwrap();

    wait_for(
        "a drain at 94% from 45s-old samples",
        Duration::from_secs(25),
        || async {
            // Repeats of an Event are counted in its series, under the first note.
            let notes = event_notes(&client, &ns.name, "Drained").await;
            let drains = event_count(&client, &ns.name, "Drained").await;
            (drains == 2 && notes.iter().all(|n| n.contains("at 94%"))).then_some(())
        },
    )
    .await;
    assert!(
        event_notes(&client, &ns.name, "GuardBlind")
            .await
            .is_empty(),
        "{}",
        operator.log_tail()
    );
}

#[tokio::test]
async fn a_blind_guard_names_at_most_five_pods() {
    // Samples five minutes old are stale for any setting.
    let url = prometheus_proxy(|_| (300, Duration::ZERO)).await;
    let env = [
        ("PROMETHEUS_URL", url.as_str()),
        ("BATCHGUARD_MEMORY_MAX_SAMPLE_AGE", "5s"),
    ];
    let Setup {
        client: _,
        ns: _ns,
        operator: _operator,
        runs,
    } = Setup::with_env("blindmany", &env).await;
    let mut run = guarded(
        "wide",
        700,
        100,
        r#"sim.batchguard.dev/duration: "40s""#,
        "{threshold: 85, action: Drain}",
    );
    run.spec.parallelism = 7;
    runs.create(&PostParams::default(), &run).await.unwrap();

    let message = wait_for(
        "a GuardBlind condition naming 5 of the 7 workers",
        Duration::from_secs(40),
        || async {
            let status = runs.get("wide").await.ok()?.status?;
            let c = status
                .conditions
                .into_iter()
                .find(|c| c.type_ == "MemoryPressure")?;
            (c.reason == "GuardBlind" && c.message.contains("and 2 more")).then_some(c.message)
        },
    )
    .await;
    assert_eq!(message.matches("wide-").count(), 5, "{message}");
}

/// Denies the delete of any pod the guard marked in one namespace, until dropped.
struct DenyGuardDeletes {
    name: String,
}

impl DenyGuardDeletes {
    async fn new(namespace: &str) -> Self {
        let name = format!("deny-guard-deletes-{namespace}");
        let manifest = format!(
            r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {name}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {{apiGroups: [""], apiVersions: ["v1"], operations: ["DELETE"], resources: ["pods"]}}
  validations:
  - expression: "!has(oldObject.metadata.annotations) || !('batchguard.dev/guard-action' in oldObject.metadata.annotations)"
    message: "test: the guard's deletes are denied"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {name}}}
spec:
  policyName: {name}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {{kubernetes.io/metadata.name: {namespace}}}
"#
        );
        let (ok, out, err) = kubectl(&["apply", "-f", "-"], Some(&manifest));
        assert!(ok, "{out}{err}");
        // The apiserver loads a new policy within about a second.
        tokio::time::sleep(Duration::from_secs(3)).await;
        Self { name }
    }
}

impl Drop for DenyGuardDeletes {
    fn drop(&mut self) {
        for kind in [
            "validatingadmissionpolicybinding",
            "validatingadmissionpolicy",
        ] {
            kubectl(&["delete", kind, &self.name, "--ignore-not-found"], None);
        }
    }
}

fn guard_marked(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("batchguard.dev/guard-action"))
}

#[tokio::test]
async fn a_drain_whose_delete_was_denied_is_retried() {
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::new("denied").await;
    let deny = DenyGuardDeletes::new(&ns.name).await;
    let annotations = r#"sim.batchguard.dev/duration: "25s", sim.batchguard.dev/memory: "120Mi", sim.batchguard.dev/memory-attempts: "1", sim.batchguard.dev/resume-after: "10""#;
    runs.create(
        &PostParams::default(),
        &guarded(
            "denied",
            200,
            100,
            annotations,
            "{threshold: 85, action: Drain, drainGracePeriodSeconds: 2}",
        ),
    )
    .await
    .unwrap();
    wait_for("both workers marked", Duration::from_secs(30), || async {
        let pods = pods_of(&client, &ns.name, "denied").await;
        (pods.iter().filter(|p| guard_marked(p)).count() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pods = pods_of(&client, &ns.name, "denied").await;
    assert!(
        pods.iter().all(|p| p.metadata.deletion_timestamp.is_none()),
        "the policy denied the deletes"
    );

    drop(deny);
    wait_for(
        "the denied deletes to be retried",
        Duration::from_secs(20),
        || async {
            let pods = pods_of(&client, &ns.name, "denied").await;
            let marked: Vec<&Pod> = pods.iter().filter(|p| guard_marked(p)).collect();
            let stopping = |p: &&Pod| {
                p.metadata.deletion_timestamp.is_some()
                    || p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
            };
            (marked.len() == 2 && marked.iter().all(stopping)).then_some(())
        },
    )
    .await;
    assert_eq!(
        event_count(&client, &ns.name, "GuardActionFailed").await,
        2,
        "one warning per denied drain, not one per poll"
    );
    let run = wait_finished(&runs, "denied", Duration::from_secs(120), &operator).await;
    let status = run.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    assert_eq!(status.guard.drains, 2, "{:?}", status.guard);
    assert_eq!(status.aggregate.records, 200);
}

#[tokio::test]
async fn a_pod_marked_before_the_operator_died_is_deleted_after_its_restart() {
    let Setup {
        client,
        ns,
        mut operator,
        runs: _runs,
    } = Setup::new("marked").await;
    // 50Mi: far below the threshold, so only the mark can stop the worker.
    let annotations =
        r#"sim.batchguard.dev/duration: "60s", sim.batchguard.dev/resume-after: "10""#;
    _runs
        .create(
            &PostParams::default(),
            &guarded(
                "marked",
                100,
                100,
                annotations,
                "{threshold: 85, action: Drain, drainGracePeriodSeconds: 2}",
            ),
        )
        .await
        .unwrap();
    let running = wait_running(&client, &ns.name, "marked", 1).await;
    let pod = running[0].metadata.name.clone().unwrap();
    // The operator dies between marking the pod and deleting it.
    operator.kill();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.patch(
        &pod,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"annotations": {
            "batchguard.dev/guard-action": "Drain", "batchguard.dev/guard-percent": "91"}}})),
    )
    .await
    .unwrap();
    operator.restart();
    wait_for(
        "the marked pod to be deleted",
        Duration::from_secs(20),
        || async {
            let p = pods.get(&pod).await.ok()?;
            p.metadata.deletion_timestamp.is_some().then_some(())
        },
    )
    .await;
    // The Event follows the delete that went through; the test may see the delete first.
    wait_for(
        "the drain of the marked pod to be announced",
        Duration::from_secs(10),
        || async {
            let drained = event_notes(&client, &ns.name, "Drained").await;
            drained
                .iter()
                .any(|n| n.contains("was at 91%"))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn one_query_per_poll_measures_every_run() {
    // Every memory query the guard sends, with when.
    let queries = Arc::new(std::sync::Mutex::new(
        Vec::<(std::time::Instant, String)>::new(),
    ));
    let seen = queries.clone();
    let url = prometheus_proxy(move |request| {
        if request.starts_with("/api/v1/query") {
            let at = std::time::Instant::now();
            seen.lock().unwrap().push((at, request.to_string()));
        }
        (0, Duration::ZERO)
    })
    .await;
    let env = [("PROMETHEUS_URL", url.as_str())];
    let Setup {
        client,
        ns,
        operator,
        runs,
    } = Setup::with_env("onequery", &env).await;
    let mut steady = guarded(
        "steady",
        100,
        100,
        r#"sim.batchguard.dev/duration: "60s""#,
        "{threshold: 85, action: Drain}",
    );
    steady.spec.parallelism = 1;
    runs.create(&PostParams::default(), &steady).await.unwrap();
    wait_running(&client, &ns.name, "steady", 1).await;
    // 4Mi/s: 85% of 128Mi after about 27s.
    let mut fast = guarded(
        "fast",
        100,
        100,
        r#"sim.batchguard.dev/duration: "60s", sim.batchguard.dev/memory-growth: "4Mi", sim.batchguard.dev/memory-attempts: "1""#,
        "{threshold: 85, action: Drain, drainGracePeriodSeconds: 2}",
    );
    fast.spec.parallelism = 1;
    runs.create(&PostParams::default(), &fast).await.unwrap();
    wait_running(&client, &ns.name, "fast", 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let window_start = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let in_window: Vec<String> = queries
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| *at >= window_start)
        .map(|(_, query)| query.clone())
        .collect();
    // A one-second poll: about ten queries in 10s, each over both runs' workers (one query
    // per run would send about twenty).
    assert!(
        (5..=12).contains(&in_window.len()),
        "{} queries in 10s of one-second polls over two runs\n{}",
        in_window.len(),
        operator.log_tail()
    );
    let partial: Vec<&String> = in_window
        .iter()
        .filter(|q| !(q.contains("steady-") && q.contains("fast-")))
        .collect();
    assert!(
        partial.is_empty(),
        "queries that did not cover both runs: {partial:?}"
    );

    let note = wait_for(
        "the fast run's worker drained",
        Duration::from_secs(40),
        || async {
            let notes = event_notes(&client, &ns.name, "Drained").await;
            notes.into_iter().find(|n| n.contains("fast-"))
        },
    )
    .await;
    let percent: u32 = note
        .split_once(" at ")
        .and_then(|(_, rest)| rest.split_once('%'))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(999);
    assert!(
        (85..=110).contains(&percent),
        "drained at {percent}%, not promptly after crossing 85%: {note}"
    );
}
