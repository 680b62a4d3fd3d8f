//! batchguard against an Indexed Job doing the same work, alternated repetitions in one
//! namespace with one operator, each timed, its pipeline stamped and its CPU load checked.

use std::collections::BTreeMap;

use kube::Client;
use serde_json::json;

use crate::apiserver;
use crate::load;
use crate::pipeline::{Latencies, Recorder, Spread};
use crate::stats::{median, min_max};
use crate::support::{Operator, TestNamespace};
use crate::workloads::*;

pub async fn head_to_head(
    client: &Client,
    label: &str,
    work: &Work,
    reps: usize,
) -> serde_json::Value {
    println!(
        "\n== {label}: {} batches x {} at parallelism {}, {reps} alternated repetitions",
        work.batches, work.duration, work.parallelism
    );
    let ns = TestNamespace::new(client, "bench").await;
    let operator = Operator::start_with_env(&ns.name, &[("RUST_LOG", "warn")]);
    wait_ready(&operator).await;
    let mut reps_json = vec![];
    let mut per_batch: BTreeMap<String, f64> = BTreeMap::new();
    let (mut bg_pipelines, mut job_pipelines) = (vec![], vec![]);
    // The operator's reconcile duration (p50, p99 in ms; bucket bounds) per repetition.
    let mut reconciles: Vec<(f64, f64)> = vec![];
    for rep in 0..reps {
        let quiet_before = {
            let before = load::sample();
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            load::between(&before, &load::sample(), &[operator.pid()])
        };
        println!("rep {}: before: {}", rep + 1, quiet_before.describe());
        let mut bg = None;
        let mut job = None;
        // Alternated: odd repetitions start with the Indexed Job.
        for batchguard_turn in [rep % 2 == 0, rep % 2 != 0] {
            let recorder = Recorder::start(client, &ns.name).await;
            let start = load::sample();
            let writes_before = apiserver::writes(client).await;
            if batchguard_turn {
                let before = scrape(&operator).await;
                let run = batch_run_of(&format!("bench-{rep}"), work, None);
                let (seconds, _) =
                    run_batchruns(client, &ns.name, vec![(run, work.batches * 10)]).await;
                let after = scrape(&operator).await;
                for (key, value) in requests(&before, &after) {
                    *per_batch.entry(key).or_default() += value / work.batches as f64 / reps as f64;
                }
                let load = load::between(&start, &load::sample(), &[operator.pid()]);
                let writes = apiserver::per_batch(
                    &writes_before,
                    &apiserver::writes(client).await,
                    work.batches,
                );
                let latencies = recorder.latencies(work.parallelism as usize, true);
                let reconcile = |q| {
                    histogram_quantile(&before, &after, "batchguard_reconcile_duration_seconds", q)
                        * 1e3
                };
                reconciles.push((reconcile(0.5), reconcile(0.99)));
                bg = Some((seconds, load, latencies, writes));
            } else {
                let job_spec = indexed_job_of(&format!("indexed-{rep}"), work);
                let seconds = run_indexed_jobs(client, &ns.name, vec![job_spec]).await;
                let load = load::between(&start, &load::sample(), &[operator.pid()]);
                let writes = apiserver::per_batch(
                    &writes_before,
                    &apiserver::writes(client).await,
                    work.batches,
                );
                let latencies = recorder.latencies(work.parallelism as usize, false);
                job = Some((seconds, load, latencies, writes));
            }
            drop(recorder);
            settle(client, &ns.name).await;
        }
        let (bg, job) = (bg.unwrap(), job.unwrap());
        let quiet = quiet_before.quiet() && bg.1.quiet() && job.1.quiet();
        let ratio = bg.0 / job.0;
        println!(
            "rep {}: batchguard {:.1} s, Indexed Job {:.1} s, ratio {ratio:.3}{}",
            rep + 1,
            bg.0,
            job.0,
            if quiet {
                ""
            } else {
                "  (not counted: the CPU was shared, see below)"
            }
        );
        for (who, (_, load, latencies, writes)) in [("batchguard", &bg), ("Indexed Job", &job)] {
            println!("   {who:<11} during: {}", load.describe());
            println!("   {who:<11} cluster CPU: {}", load.describe_components());
            println!(
                "   {who:<11} apiserver writes: {}",
                apiserver::describe(writes)
            );
            println!("   {who:<11} pipeline: {}", describe(latencies));
        }
        let (r50, r99) = reconciles[rep];
        println!("   batchguard  reconcile: p50 <= {r50:.0} ms, p99 <= {r99:.0} ms");
        bg_pipelines.push(bg.2);
        job_pipelines.push(job.2);
        reps_json.push(json!({
            "batchguard_seconds": bg.0, "indexed_job_seconds": job.0, "ratio": ratio, "counted": quiet,
            "load_before": quiet_before, "load_batchguard": bg.1, "load_indexed_job": job.1,
            "pipeline_batchguard": bg.2.json(), "pipeline_indexed_job": job.2.json(),
            "apiserver_writes_per_batch_batchguard": bg.3, "apiserver_writes_per_batch_indexed_job": job.3,
            "reconcile_p50_ms": reconciles[rep].0, "reconcile_p99_ms": reconciles[rep].1,
        }));
    }
    let counted: Vec<f64> = reps_json
        .iter()
        .filter(|r| r["counted"] == true)
        .map(|r| r["ratio"].as_f64().unwrap())
        .collect();
    let (lo, hi) = min_max(&counted);
    let verdict = if counted.len() * 2 > reps && counted.len() >= 3 {
        println!(
            "{label}: median ratio {:.3} (min {lo:.3}, max {hi:.3}) over {} quiet repetitions of {reps}",
            median(&counted),
            counted.len()
        );
        json!({"median_ratio": median(&counted), "min_ratio": lo, "max_ratio": hi, "counted": counted.len()})
    } else {
        let why = format!(
            "{} of {reps} repetitions ran while other processes used more than {} cores: no ratio reported",
            reps - counted.len(),
            load::FOREIGN_LIMIT_CORES
        );
        println!("{label}: {why}");
        json!({"refused": why, "counted": counted.len()})
    };
    let writes: f64 = per_batch
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("get ") && !k.starts_with("list ") && !k.starts_with("watch ")
        })
        .map(|(_, v)| v)
        .sum();
    json!({
        "work": {"batches": work.batches, "duration": work.duration, "parallelism": work.parallelism, "reps": reps},
        "reps": reps_json,
        "ratio": verdict,
        "pipeline": {
            "batchguard": pooled(&bg_pipelines),
            "indexed_job": pooled(&job_pipelines),
        },
        "requests_per_batch": {"by_verb": per_batch, "writes": writes},
    })
}

fn describe(l: &Latencies) -> String {
    format!(
        "end->next create p50 {:.0} ms p95 {:.0}; create->Running p50 {:.0} p95 {:.0}; end->next Running p50 {:.0} p95 {:.0}",
        l.end_to_next_create.p50,
        l.end_to_next_create.p95,
        l.create_to_running.p50,
        l.create_to_running.p95,
        l.end_to_next_running.p50,
        l.end_to_next_running.p95
    )
}

/// The median over repetitions of each percentile.
fn pooled(all: &[Latencies]) -> serde_json::Value {
    let part = |pick: fn(&Latencies) -> Spread| {
        let spreads: Vec<Spread> = all.iter().map(pick).collect();
        json!({"p50_ms": Spread::pooled(&spreads, |s| s.p50), "p95_ms": Spread::pooled(&spreads, |s| s.p95)})
    };
    json!({
        "end_to_next_create": part(|l| l.end_to_next_create),
        "create_to_running": part(|l| l.create_to_running),
        "end_to_next_running": part(|l| l.end_to_next_running),
    })
}
