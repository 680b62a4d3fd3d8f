//! How fast the Prometheus memory guard reacts to real memory, on the local cluster's real node.
//!
//! Run with the cluster up (as root, so it has its real node):
//! `eval "$(tests/cluster/up)" && cargo bench --workspace --bench guard_reaction` (`--workspace`:
//! the same feature resolution as the test build, so nothing is compiled again).
//! Knobs (env): BENCH_RATES (MiB/s, "5,10,20"), BENCH_REPS (5), BENCH_LIMIT_MIB (256),
//! BENCH_THRESHOLD (85), BENCH_OUT (benches/results).
//!
//! Each repetition is one BatchRun whose single worker (Python, real container) grows its
//! memory at a steady rate until the guard drains it. The worker itself samples its cgroup's
//! working set (usage minus inactive file, what cAdvisor reports and the OOM killer enforces)
//! every 5 ms and notes when it crossed the threshold and when SIGTERM arrived; it reports both
//! through the worker contract (as sums, which the operator aggregates). Printed per rate, p50
//! and p95 with min-max: the reaction time (crossing → SIGTERM) and where the drain landed (%
//! of the limit, MiB of headroom), and how many workers the kernel OOM-killed first.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use batchguard::api::{BatchRun, Phase};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use support::*;

/// The worker: grows `rate` MiB/s in 100 ms steps on the run's first batch; the continuation
/// after the drain only finishes the records. At SIGTERM it reports the reaction.
const WORKER: &str = r#"
import os, signal, threading, time
from batchguard_worker import Batch

CGROUP = "/sys/fs/cgroup/memory"
def working_set():
    usage = int(open(CGROUP + "/memory.usage_in_bytes").read())
    inactive = 0
    for line in open(CGROUP + "/memory.stat"):
        key, value = line.split()
        if key == "total_inactive_file":
            inactive = int(value)
    return max(usage - inactive, 0)

limit = int(os.environ["BATCHGUARD_MEMORY_LIMIT_BYTES"])
threshold = limit * THRESHOLD / 100
first = os.environ["BATCHGUARD_RANGE_START"] == "0"
crossed, stopped = [], []

def watch():
    while not stopped:
        if not crossed and working_set() >= threshold:
            crossed.append(time.time())
        time.sleep(0.005)

held = []
# The SDK's own guard would stop the worker first: this measures the operator's guard.
with Batch.from_env(memory_guard=False) as batch:
    def on_sigterm(signum, frame):
        stopped.append((time.time(), working_set()))
        batch._on_sigterm(signum, frame)
    signal.signal(signal.SIGTERM, on_sigterm)
    threading.Thread(target=watch, daemon=True).start()
    for chunk in batch.chunks(1):
        if first:
            held.append(b"\x01" * int(RATE * 0.1 * (1 << 20)))
            time.sleep(0.1)
        batch.done(chunk)
    if stopped and crossed:
        at, usage = stopped[0]
        batch.add_sum("reaction_ms", (at - crossed[0]) * 1000)
        batch.add_sum("percent_at_sigterm", usage * 100 / limit)
        batch.add_sum("headroom_mib", (limit - usage) / (1 << 20))
"#;

struct Sample {
    reaction_ms: f64,
    percent: f64,
    headroom_mib: f64,
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let node = RealNode::from_env();
    let rates: Vec<f64> = env_or("BENCH_RATES", "5,10,20".to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let reps: usize = env_or("BENCH_REPS", 5);
    let limit_mib: u64 = env_or("BENCH_LIMIT_MIB", 256);
    let threshold: u32 = env_or("BENCH_THRESHOLD", 85);
    let poll = 1;
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "bench-guard").await;
    let operator = Operator::start_with_env(
        &ns.name,
        &[
            ("RUST_LOG", "warn"),
            ("BATCHGUARD_POLL_INTERVAL_SECONDS", &poll.to_string()),
        ],
    );
    let runs: Api<BatchRun> = Api::namespaced(client.clone(), &ns.name);
    println!(
        "guard reaction on {} : limit {limit_mib}Mi, threshold {threshold}%, kubelet housekeeping 1s, \
         Prometheus scrape 1s, guard poll {poll}s, {reps} repetitions per rate",
        node.name
    );

    let mut results = vec![];
    for &rate in &rates {
        let mut samples = vec![];
        let mut oom_killed = 0;
        let mut missing = 0;
        // One repetition at a time: workers that share the two cores would delay each other.
        for rep in 0..reps {
            let name = format!("ramp-{}-{rep}", rate as u64);
            let run = ramp_run(&node, &name, rate, limit_mib, threshold);
            runs.create(&PostParams::default(), &run).await.unwrap();
            let run = wait_finished(&runs, &name, Duration::from_secs(600), &operator).await;
            let status = run.status.unwrap();
            if status.phase != Some(Phase::Succeeded) {
                panic!("{name} did not succeed: {status:#?}");
            }
            oom_killed += status.guard.oom_kills;
            let sums = &status.aggregate.sums;
            match (
                sums.get("reaction_ms"),
                sums.get("percent_at_sigterm"),
                sums.get("headroom_mib"),
            ) {
                (Some(&reaction_ms), Some(&percent), Some(&headroom_mib)) => {
                    println!(
                        "  {rate:>4} MiB/s rep {rep}: SIGTERM {reaction_ms:>6.0} ms after the crossing, at {percent:.1}% ({headroom_mib:.0} MiB below the limit)"
                    );
                    samples.push(Sample {
                        reaction_ms,
                        percent,
                        headroom_mib,
                    })
                }
                _ => {
                    println!(
                        "  {rate:>4} MiB/s rep {rep}: no drain measured (OOM kills: {})",
                        status.guard.oom_kills
                    );
                    missing += 1;
                }
            }
        }
        results.push(json!({
            "rate_mib_per_s": rate,
            "reps": reps,
            "drained": samples.len(),
            "not_drained": missing,
            "oom_kills": oom_killed,
            "reaction_ms": summary(samples.iter().map(|s| s.reaction_ms).collect()),
            "percent_at_sigterm": summary(samples.iter().map(|s| s.percent).collect()),
            "headroom_mib": summary(samples.iter().map(|s| s.headroom_mib).collect()),
        }));
    }

    println!();
    println!(
        "| growth | drained | OOM-killed | reaction p50 (p95) [min-max] | at SIGTERM p50 [min-max] | headroom min |"
    );
    println!("|---|---|---|---|---|---|");
    for r in &results {
        let f = |key: &str, stat: &str| r[key][stat].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} MiB/s | {}/{} | {} | {:.0} ms ({:.0}) [{:.0}-{:.0}] | {:.1}% [{:.1}-{:.1}] | {:.0} MiB |",
            r["rate_mib_per_s"],
            r["drained"],
            r["reps"],
            r["oom_kills"],
            f("reaction_ms", "p50"),
            f("reaction_ms", "p95"),
            f("reaction_ms", "min"),
            f("reaction_ms", "max"),
            f("percent_at_sigterm", "p50"),
            f("percent_at_sigterm", "min"),
            f("percent_at_sigterm", "max"),
            f("headroom_mib", "min"),
        );
    }
    let out = env_or(
        "BENCH_OUT",
        concat!(env!("CARGO_MANIFEST_DIR"), "/benches/results").to_string(),
    );
    std::fs::create_dir_all(&out).unwrap();
    let report = json!({
        "node": node.name,
        "limit_mib": limit_mib,
        "threshold_percent": threshold,
        "housekeeping_s": 1, "scrape_s": 1, "poll_s": poll,
        "rates": results,
    });
    let path = format!("{out}/guard-reaction.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("\nwritten to {path}");
}

fn ramp_run(node: &RealNode, name: &str, rate: f64, limit_mib: u64, threshold: u32) -> BatchRun {
    // Enough 100 ms steps to reach 1.5 times the limit if nothing stopped the worker.
    let records = ((limit_mib as f64 * 1.5) / (rate * 0.1)).ceil() as u64;
    let script = WORKER
        .replace("THRESHOLD", &threshold.to_string())
        .replace("RATE", &rate.to_string());
    let command = serde_json::to_string(&["python3", "-c", &script]).unwrap();
    batch_run(&format!(
        r#"
apiVersion: batchguard.dev/v1alpha1
kind: BatchRun
metadata:
  name: {name}
spec:
  input:
    range: {{start: 0, end: {records}}}
    batchSize: {records}
  parallelism: 1
  template:
    spec:
{placement}
      containers:
        - name: worker
          image: {image}
          imagePullPolicy: Never
          command: {command}
  resources:
    memory: {{request: {limit_mib}Mi, limit: {limit_mib}Mi}}
  memoryGuard: {{threshold: {threshold}, action: Drain, drainGracePeriodSeconds: 10, onPressure: Resume}}
  retry: {{backoff: {{baseSeconds: 1, maxSeconds: 2}}}}
"#,
        placement = node.placement(6),
        image = node.worker_image,
    ))
}

/// p50, p95, min and max (nearest rank); nulls when there are no samples.
fn summary(mut values: Vec<f64>) -> serde_json::Value {
    if values.is_empty() {
        return json!({"p50": null, "p95": null, "min": null, "max": null});
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank =
        |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
    json!({"p50": rank(0.5), "p95": rank(0.95), "min": values[0], "max": values[values.len() - 1]})
}
