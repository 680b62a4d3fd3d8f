//! batchguard against plain Indexed Jobs on the same local cluster.
//!
//! Run with the cluster up: `eval "$(tests/cluster/up)" && cargo bench --bench compare`.
//! Parts (BENCH_PARTS, default all, comma-separated):
//! - `makespan`: 1,000 batches x 2 s at parallelism 50 as a BatchRun and as an Indexed Job,
//!   BENCH_REPS (5) alternated repetitions, with the per-batch pipeline latencies of both and
//!   the CPU used by anything outside the cluster (a repetition that shared the CPU is not
//!   counted, and no ratio is reported when most did);
//! - `wide`: the same at 1,000 batches x 1 s at parallelism 100 (BENCH_WIDE_REPS, 3);
//! - `many`: BENCH_MANY_RUNS (100) runs x BENCH_MANY_BATCHES (100) batches submitted together,
//!   alone and through one shared BatchQueue, against as many Indexed Jobs;
//! - `scale`: one run of BENCH_SCALE (100,1000,10000) batches on a fresh operator each;
//! - `planner`: the status size at 100,000 batches (the real planner, a synthetic cluster).
//!
//! Other knobs: BENCH_BATCHES, BENCH_DURATION, BENCH_PARALLELISM, BENCH_MANY_PARALLELISM (5),
//! BENCH_MANY_QUEUE (100 live batches), BENCH_OUT (benches/results).

#[path = "../../tests/support/mod.rs"]
mod support;

mod apiserver;
mod load;
mod makespan;
mod many;
mod pipeline;
mod report;
mod scale;
mod stats;
mod synthetic;
mod workloads;

use serde_json::json;
use support::env_or;
use workloads::Work;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let parts: Vec<String> = env_or(
        "BENCH_PARTS",
        "makespan,wide,many,scale,planner".to_string(),
    )
    .split(',')
    .map(|p| p.trim().to_string())
    .collect();
    let wants = |part: &str| parts.iter().any(|p| p == part);
    let out = env_or(
        "BENCH_OUT",
        concat!(env!("CARGO_MANIFEST_DIR"), "/benches/results").to_string(),
    );
    let client = support::client().await;
    support::install_crd(&client).await;
    let mut results = json!({"machine": report::machine()});

    if wants("makespan") {
        let work = Work {
            batches: env_or("BENCH_BATCHES", 1000),
            duration: env_or("BENCH_DURATION", "2s".to_string()),
            parallelism: env_or("BENCH_PARALLELISM", 50),
        };
        results["makespan"] =
            makespan::head_to_head(&client, "makespan", &work, env_or("BENCH_REPS", 5)).await;
    }
    if wants("wide") {
        let work = Work {
            batches: 1000,
            duration: "1s".into(),
            parallelism: 100,
        };
        results["wide"] =
            makespan::head_to_head(&client, "wide", &work, env_or("BENCH_WIDE_REPS", 3)).await;
    }
    if wants("many") {
        let many = many::Many {
            runs: env_or("BENCH_MANY_RUNS", 100),
            work: Work {
                batches: env_or("BENCH_MANY_BATCHES", 100),
                duration: "1s".into(),
                parallelism: env_or("BENCH_MANY_PARALLELISM", 5),
            },
            queue_max_batches: env_or("BENCH_MANY_QUEUE", 100),
            poll_seconds: 1.0,
        };
        results["many"] = many::many_runs(&client, &many).await;
    }
    if wants("scale") {
        let sizes: Vec<u64> = env_or("BENCH_SCALE", "100,1000,10000".to_string())
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        results["scale"] = scale::growing_runs(&client, &sizes).await;
    }
    if wants("planner") {
        let bytes = synthetic::planner_status_size(100_000, 1000, 50);
        println!("\n100000 batches (planner, synthetic cluster): peak status {bytes} bytes");
        results["status_bytes_100k_planner"] = json!(bytes);
    }

    std::fs::create_dir_all(&out).unwrap();
    // A partial run updates its parts and keeps the others from the last full one.
    let path = format!("{out}/results.json");
    let mut merged: serde_json::Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| json!({}));
    for (key, value) in results.as_object().unwrap() {
        merged[key] = value.clone();
    }
    std::fs::write(&path, serde_json::to_string_pretty(&merged).unwrap()).unwrap();
    report::chart(&merged, &format!("{out}/chart.png"));
    println!("\n{}", report::tables(&merged));
    println!("written to {path} and chart.png");
}
