//! The month-end case: many runs submitted together, alone and through one shared BatchQueue,
//! against the same work as that many Indexed Jobs.

use std::collections::BTreeMap;

use batchguard::api::BatchQueue;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;

use crate::load;
use crate::support::{Operator, TestNamespace};
use crate::workloads::*;

pub struct Many {
    pub runs: usize,
    pub work: Work,
    /// The shared queue's cap on live batches.
    pub queue_max_batches: u32,
    pub poll_seconds: f64,
}

pub async fn many_runs(client: &Client, many: &Many) -> serde_json::Value {
    let Many { runs, work, .. } = many;
    println!(
        "\n== many runs: {runs} BatchRuns x {} batches x {} at parallelism {} each",
        work.batches, work.duration, work.parallelism
    );
    let mut variants = serde_json::Map::new();
    for queued in [false, true] {
        let label = if queued {
            "shared BatchQueue"
        } else {
            "no queue"
        };
        variants.insert(label.into(), batchguard_variant(client, many, queued).await);
    }
    let ns = TestNamespace::new(client, "many").await;
    let start = load::sample();
    let jobs = (0..*runs)
        .map(|i| indexed_job_of(&format!("indexed-{i}"), work))
        .collect();
    let seconds = run_indexed_jobs(client, &ns.name, jobs).await;
    let load = load::between(&start, &load::sample(), &[]);
    println!("{runs} Indexed Jobs: {seconds:.1} s; {}", load.describe());
    settle(client, &ns.name).await;
    variants.insert(
        "Indexed Jobs".into(),
        json!({"seconds": seconds, "load": load}),
    );
    json!({
        "work": {"runs": runs, "batches": work.batches, "duration": work.duration, "parallelism": work.parallelism,
            "queue_max_batches": many.queue_max_batches},
        "variants": variants,
    })
}

async fn batchguard_variant(client: &Client, many: &Many, queued: bool) -> serde_json::Value {
    let ns = TestNamespace::new(client, "many").await;
    let operator = Operator::start_with_env(&ns.name, &[("RUST_LOG", "warn")]);
    wait_ready(&operator).await;
    let queue = queued.then_some("month-end");
    if queued {
        let queues: Api<BatchQueue> = Api::namespaced(client.clone(), &ns.name);
        let queue: BatchQueue = serde_json::from_value(json!({
            "apiVersion": "batchguard.dev/v1alpha1", "kind": "BatchQueue",
            "metadata": {"name": "month-end"},
            "spec": {"memory": "1000Gi", "maxBatches": many.queue_max_batches},
        }))
        .unwrap();
        queues.create(&PostParams::default(), &queue).await.unwrap();
    }
    let runs = (0..many.runs)
        .map(|i| {
            (
                batch_run_of(&format!("run-{i}"), &many.work, queue),
                many.work.batches * 10,
            )
        })
        .collect();
    let before = scrape(&operator).await;
    let cpu_before = cpu_seconds(operator.pid());
    let start = load::sample();
    let (seconds, _) = run_batchruns(client, &ns.name, runs).await;
    let load = load::between(&start, &load::sample(), &[operator.pid()]);
    let after = scrape(&operator).await;
    let cpu = cpu_seconds(operator.pid()) - cpu_before;
    let rss = peak_rss_mib(operator.pid());
    let p99 = histogram_quantile(
        &before,
        &after,
        "batchguard_reconcile_duration_seconds",
        0.99,
    );
    let per_second: BTreeMap<String, f64> = requests(&before, &after)
        .into_iter()
        .map(|(k, v)| (k, v / seconds))
        .collect();
    let queries = grew(&before, &after, "batchguard_guard_queries_total");
    let queries_per_poll = queries / (seconds / many.poll_seconds);
    let label = if queued {
        "shared BatchQueue"
    } else {
        "no queue"
    };
    println!(
        "{} runs, {label}: {seconds:.1} s, operator peak RSS {rss:.1} MiB, CPU {cpu:.1} s, reconcile p99 <= {:.0} ms, {queries_per_poll:.1} Prometheus queries per poll; {}",
        many.runs,
        p99 * 1e3,
        load.describe()
    );
    let rates = per_second
        .iter()
        .map(|(k, v)| format!("{k} {v:.1}/s"))
        .collect::<Vec<_>>()
        .join(", ");
    println!("   API requests: {rates}");
    settle(client, &ns.name).await;
    json!({
        "seconds": seconds, "peak_rss_mib": rss, "cpu_seconds": cpu, "reconcile_p99_seconds": p99,
        "requests_per_second": per_second, "guard_queries_per_poll": queries_per_poll, "load": load,
    })
}
