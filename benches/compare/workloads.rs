//! The same work two ways: BatchRuns driven by the operator, and plain Indexed Jobs; and what
//! the benchmark reads from the operator's process and its /metrics.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use batchguard::api::{BatchRun, Phase};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::support::{Operator, batch_run, http_get, wait_for};

/// The shape of one piece of work: `batches` batches of 10 records, each worker living
/// `duration` on a kwok node, at most `parallelism` at once.
#[derive(Clone, Debug)]
pub struct Work {
    pub batches: u64,
    pub duration: String,
    pub parallelism: u32,
}

pub fn batch_run_of(name: &str, work: &Work, queue: Option<&str>) -> BatchRun {
    let queue = queue.map(|q| format!("\n  queue: {q}")).unwrap_or_default();
    batch_run(&format!(
        r#"
apiVersion: batchguard.dev/v1alpha1
kind: BatchRun
metadata: {{name: {name}}}
spec:
  input: {{range: {{start: 0, end: {end}}}, batchSize: 10}}
  parallelism: {parallelism}{queue}
  template:
    metadata: {{annotations: {{sim.batchguard.dev/duration: "{duration}"}}}}
    spec: {{containers: [{{name: worker, image: registry.example/w:1}}]}}
  resources: {{memory: {{request: 64Mi, limit: 128Mi}}}}
"#,
        end = work.batches * 10,
        parallelism = work.parallelism,
        duration = work.duration,
    ))
}

pub fn indexed_job_of(name: &str, work: &Work) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"completions": work.batches, "parallelism": work.parallelism, "completionMode": "Indexed", "backoffLimit": 0,
            "template": {"metadata": {"annotations": {"sim.batchguard.dev/duration": work.duration}},
                "spec": {"restartPolicy": "Never", "automountServiceAccountToken": false,
                    "containers": [{"name": "worker", "image": "registry.example/w:1",
                        "resources": {"requests": {"memory": "64Mi"}, "limits": {"memory": "128Mi"}}}]}}}
    }))
    .unwrap()
}

/// Creates the runs at once and waits until all have Succeeded, checking each aggregate.
/// Returns the makespan and the largest status seen, in JSON bytes.
pub async fn run_batchruns(client: &Client, ns: &str, runs: Vec<(BatchRun, u64)>) -> (f64, usize) {
    let api: Api<BatchRun> = Api::namespaced(client.clone(), ns);
    let expected: BTreeMap<String, u64> = runs
        .iter()
        .map(|(run, records)| (run.metadata.name.clone().unwrap(), *records))
        .collect();
    let started = Instant::now();
    for (run, _) in &runs {
        api.create(&PostParams::default(), run).await.unwrap();
    }
    let mut largest = 0;
    loop {
        let list = api.list(&ListParams::default()).await.unwrap();
        let mut done = 0;
        for run in &list.items {
            let status = run.status.clone().unwrap_or_default();
            largest = largest.max(serde_json::to_vec(&status).unwrap().len());
            match status.phase {
                Some(Phase::Succeeded) => {
                    let name = run.metadata.name.as_deref().unwrap_or_default();
                    assert_eq!(
                        Some(&status.aggregate.records),
                        expected.get(name),
                        "exact aggregate of {name}"
                    );
                    done += 1;
                }
                Some(Phase::Failed) => panic!("benchmark run failed: {:?}", status.conditions),
                _ => {}
            }
        }
        if done == expected.len() {
            return (started.elapsed().as_secs_f64(), largest);
        }
        tokio::time::sleep(Duration::from_millis(if expected.len() > 1 {
            500
        } else {
            100
        }))
        .await;
    }
}

/// Creates the Jobs at once and waits until all are Complete; returns the makespan.
pub async fn run_indexed_jobs(client: &Client, ns: &str, jobs: Vec<Job>) -> f64 {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    let count = jobs.len();
    let started = Instant::now();
    for job in &jobs {
        api.create(&PostParams::default(), job).await.unwrap();
    }
    loop {
        let list = api.list(&ListParams::default()).await.unwrap();
        let complete = list
            .items
            .iter()
            .filter(|job| {
                job.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c.type_ == "Complete" && c.status == "True")
                    })
            })
            .count();
        if complete == count {
            return started.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(if count > 1 { 500 } else { 100 })).await;
    }
}

/// Removes what a run left and waits until the namespace holds no pods, so runs don't overlap.
pub async fn settle(client: &Client, ns: &str) {
    let runs: Api<BatchRun> = Api::namespaced(client.clone(), ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let _ = runs
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    let _ = jobs
        .delete_collection(&DeleteParams::background(), &ListParams::default())
        .await;
    wait_for(
        "the namespace to empty",
        Duration::from_secs(600),
        || async {
            let left = pods.list(&ListParams::default()).await.ok()?.items.len()
                + runs.list(&ListParams::default()).await.ok()?.items.len()
                + jobs.list(&ListParams::default()).await.ok()?.items.len();
            (left == 0).then_some(())
        },
    )
    .await;
}

pub async fn wait_ready(operator: &Operator) {
    wait_for(
        "the operator to be ready",
        Duration::from_secs(60),
        || async {
            http_get(&operator.admin, "/readyz")
                .await
                .filter(|b| b.contains("ready"))
                .map(|_| ())
        },
    )
    .await;
}

/// The operator's counters and histogram buckets, by series (name and labels).
pub async fn scrape(operator: &Operator) -> BTreeMap<String, f64> {
    operator
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("batchguard_"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Requests by "verb resource" between two scrapes.
pub fn requests(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (series, value) in after {
        let Some(labels) = series.strip_prefix("batchguard_api_requests_total{") else {
            continue;
        };
        let field = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)?
                .split('"')
                .next()
                .map(str::to_string)
        };
        if let (Some(verb), Some(resource)) = (field("verb"), field("resource")) {
            *out.entry(format!("{verb} {resource}")).or_default() +=
                value - before.get(series).unwrap_or(&0.0);
        }
    }
    out
}

/// A counter's growth between two scrapes.
pub fn grew(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, series: &str) -> f64 {
    after.get(series).unwrap_or(&0.0) - before.get(series).unwrap_or(&0.0)
}

/// The `q` quantile (0-1) of a histogram's observations between two scrapes: the upper
/// bound of the bucket that holds it.
pub fn histogram_quantile(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    name: &str,
    q: f64,
) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter_map(|(series, value)| {
            let le = series.strip_prefix(&prefix)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value - before.get(series).unwrap_or(&0.0)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total && total > 0.0)
        .map_or(f64::NAN, |b| b.0)
}

fn status_field(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

pub fn peak_rss_mib(pid: u32) -> f64 {
    status_field(pid, "VmHWM:") as f64 / 1024.0
}

pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}
