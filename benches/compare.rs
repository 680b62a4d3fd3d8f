//! batchguard against a plain Indexed Job on the same local cluster.
//!
//! Run with the cluster up: `eval "$(tests/cluster/up)" && cargo bench --bench compare`.
//! Knobs (env): BENCH_BATCHES (1000), BENCH_DURATION (2s), BENCH_PARALLELISM (50),
//! BENCH_REPS (3), BENCH_SCALE (100,1000,10000), BENCH_OUT (benches/results).
//!
//! It prints and writes (JSON + PNG): each makespan of the same work done as a BatchRun and as
//! an Indexed Job (alternated), their ratio, the API requests the operator made per batch by
//! verb, the operator's RSS and CPU as runs grow, and the status size — measured on the real
//! cluster up to the largest scale, and at 100,000 batches with the real planner driven by a
//! synthetic cluster.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use batchguard::api::{BatchRun, BatchRunSpec, BatchRunStatus, Phase, RecordRange};
use batchguard::plan::{
    JobFinish, JobState, Observed, ObservedAttempt, PodState, WorkerExit, plan,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use support::*;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Settings {
    batches: u64,
    duration: String,
    parallelism: u32,
    reps: usize,
    scale: Vec<u64>,
    out: String,
}

fn main() {
    let settings = Settings {
        batches: env("BENCH_BATCHES", 1000),
        duration: env("BENCH_DURATION", "2s".to_string()),
        parallelism: env("BENCH_PARALLELISM", 50),
        reps: env("BENCH_REPS", 3),
        scale: env("BENCH_SCALE", "100,1000,10000".to_string())
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect(),
        out: env(
            "BENCH_OUT",
            concat!(env!("CARGO_MANIFEST_DIR"), "/benches/results").to_string(),
        ),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench(settings));
}

async fn bench(s: Settings) {
    let client = client().await;
    install_crd(&client).await;
    let mut results = json!({
        "machine": machine(),
        "settings": {"batches": s.batches, "duration": s.duration, "parallelism": s.parallelism, "reps": s.reps},
    });

    // 1-3: makespans, alternated, and the operator's requests per batch.
    let ns = TestNamespace::new(&client, "bench").await;
    let operator = Operator::start_with_env(&ns.name, &[("RUST_LOG", "warn")]);
    wait_ready(&operator).await;
    let mut pairs = vec![];
    let mut requests: BTreeMap<String, f64> = BTreeMap::new();
    for rep in 0..s.reps {
        let mut bg = 0.0;
        let mut job = 0.0;
        for first in [rep % 2 == 0, rep % 2 != 0] {
            if first {
                let before = request_counts(&operator).await;
                bg = run_batchrun(
                    &client,
                    &ns.name,
                    &format!("bench-{rep}"),
                    s.batches,
                    s.parallelism,
                    &s.duration,
                )
                .await
                .0;
                let after = request_counts(&operator).await;
                for (key, value) in &after {
                    *requests.entry(key.clone()).or_default() += (value
                        - before.get(key).unwrap_or(&0.0))
                        / s.batches as f64
                        / s.reps as f64;
                }
            } else {
                job = run_indexed_job(
                    &client,
                    &ns.name,
                    &format!("indexed-{rep}"),
                    s.batches,
                    s.parallelism,
                    &s.duration,
                )
                .await;
            }
            settle(&client, &ns.name).await;
        }
        println!(
            "rep {rep}: batchguard {bg:.1}s, Indexed Job {job:.1}s, ratio {:.3}",
            bg / job
        );
        pairs
            .push(json!({"batchguard_seconds": bg, "indexed_job_seconds": job, "ratio": bg / job}));
    }
    let ratios: Vec<f64> = pairs.iter().map(|p| p["ratio"].as_f64().unwrap()).collect();
    let median = median(&ratios);
    let writes: f64 = requests
        .iter()
        .filter(|(k, _)| !k.starts_with("get "))
        .map(|(_, v)| v)
        .sum();
    let reference = pairs
        .iter()
        .map(|p| p["indexed_job_seconds"].as_f64().unwrap())
        .fold(f64::MAX, f64::min);
    results["makespan"] = json!({"pairs": pairs, "median_ratio": median,
        "indexed_job_pods_per_second": s.batches as f64 / reference});
    results["requests_per_batch"] = json!({"by_verb": requests, "writes": writes});
    drop(operator);
    drop(ns);

    // 4-5: operator RSS, CPU and status size as runs grow.
    let mut scale = vec![];
    for &batches in &s.scale {
        let ns = TestNamespace::new(&client, "scale").await;
        let operator = Operator::start_with_env(&ns.name, &[("RUST_LOG", "warn")]);
        wait_ready(&operator).await;
        let pid = operator.pid();
        let (seconds, status_bytes) =
            run_batchrun(&client, &ns.name, "scale", batches, 100, "1s").await;
        let cpu = cpu_seconds(pid);
        let hwm = peak_rss_kib(pid);
        let rss_after = rss_kib(pid);
        println!(
            "{batches} batches: {seconds:.1}s, operator peak RSS {:.1} MiB, CPU {cpu:.2}s, status {status_bytes} bytes",
            hwm as f64 / 1024.0
        );
        scale.push(json!({"batches": batches, "seconds": seconds, "peak_rss_mib": hwm as f64 / 1024.0,
            "rss_after_mib": rss_after as f64 / 1024.0, "cpu_seconds": cpu, "status_bytes": status_bytes}));
        drop(operator);
        drop(ns);
    }
    results["scale"] = json!(scale);

    let synthetic = planner_status_size(100_000, 1000, 50);
    println!("100000 batches (planner, synthetic cluster): peak status {synthetic} bytes");
    results["status_bytes_100k_planner"] = json!(synthetic);

    std::fs::create_dir_all(&s.out).unwrap();
    std::fs::write(
        format!("{}/results.json", s.out),
        serde_json::to_string_pretty(&results).unwrap(),
    )
    .unwrap();
    chart(&results, &format!("{}/chart.png", s.out));
    println!("\n{}", table(&results));
    println!("written to {}/results.json and chart.png", s.out);
}

async fn wait_ready(operator: &Operator) {
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

fn spec(batches: u64, parallelism: u32, duration: &str) -> BatchRunSpec {
    let run: BatchRun = batch_run(&format!(
        r#"
apiVersion: batchguard.dev/v1alpha1
kind: BatchRun
metadata: {{name: x}}
spec:
  input: {{range: {{start: 0, end: {end}}}, batchSize: 10}}
  parallelism: {parallelism}
  template:
    metadata: {{annotations: {{sim.batchguard.dev/duration: "{duration}"}}}}
    spec: {{containers: [{{name: worker, image: registry.example/w:1}}]}}
  resources: {{memory: {{request: 64Mi, limit: 128Mi}}}}
"#,
        end = batches * 10
    ));
    run.spec
}

/// Makespan (seconds from create to Succeeded) and the largest status seen, in JSON bytes.
async fn run_batchrun(
    client: &Client,
    ns: &str,
    name: &str,
    batches: u64,
    parallelism: u32,
    duration: &str,
) -> (f64, usize) {
    let runs: Api<BatchRun> = Api::namespaced(client.clone(), ns);
    let run = BatchRun::new(name, spec(batches, parallelism, duration));
    let started = Instant::now();
    runs.create(&PostParams::default(), &run).await.unwrap();
    let mut largest = 0;
    loop {
        let run = runs.get(name).await.unwrap();
        let status = run.status.unwrap_or_default();
        largest = largest.max(serde_json::to_vec(&status).unwrap().len());
        match status.phase {
            Some(Phase::Succeeded) => {
                assert_eq!(status.aggregate.records, batches * 10, "exact aggregate");
                return (started.elapsed().as_secs_f64(), largest);
            }
            Some(Phase::Failed) => panic!("benchmark run failed: {:?}", status.conditions),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn run_indexed_job(
    client: &Client,
    ns: &str,
    name: &str,
    batches: u64,
    parallelism: u32,
    duration: &str,
) -> f64 {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"completions": batches, "parallelism": parallelism, "completionMode": "Indexed", "backoffLimit": 0,
            "template": {"metadata": {"annotations": {"sim.batchguard.dev/duration": duration}},
                "spec": {"restartPolicy": "Never", "automountServiceAccountToken": false,
                    "containers": [{"name": "worker", "image": "registry.example/w:1",
                        "resources": {"requests": {"memory": "64Mi"}, "limits": {"memory": "128Mi"}}}]}}}
    }))
    .unwrap();
    let started = Instant::now();
    jobs.create(&PostParams::default(), &job).await.unwrap();
    loop {
        let job = jobs.get(name).await.unwrap();
        let done = job
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True");
        if done {
            return started.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes what a run left and waits until the namespace holds no pods, so runs don't overlap.
async fn settle(client: &Client, ns: &str) {
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
        Duration::from_secs(300),
        || async {
            let left = pods.list(&ListParams::default()).await.ok()?.items.len()
                + runs.list(&ListParams::default()).await.ok()?.items.len();
            (left == 0).then_some(())
        },
    )
    .await;
}

async fn request_counts(operator: &Operator) -> BTreeMap<String, f64> {
    let text = operator.metrics().await;
    text.lines()
        .filter(|l| l.starts_with("batchguard_api_requests_total{"))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            let field = |name: &str| {
                labels
                    .split(&format!("{name}=\""))
                    .nth(1)?
                    .split('"')
                    .next()
                    .map(str::to_string)
            };
            Some((
                format!("{} {}", field("verb")?, field("resource")?),
                value.parse().ok()?,
            ))
        })
        .collect()
}

fn status_field(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

fn peak_rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmHWM:")
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

/// Drives the real planner through a whole run against a synthetic cluster where workers
/// finish in random order, and returns the largest status it wrote (JSON bytes).
fn planner_status_size(batches: u64, batch_size: u64, parallelism: u32) -> usize {
    let spec = {
        let mut spec = spec(batches, parallelism, "1s");
        spec.input.batch_size = batch_size;
        if let Some(range) = spec.input.range.as_mut() {
            range.end = (batches * batch_size) as i64;
        }
        spec
    };
    let mut status = BatchRunStatus::default();
    let mut attempts: Vec<ObservedAttempt> = vec![];
    let mut seed = 42u64;
    let mut largest = 0;
    let now = jiff::Timestamp::now();
    for _ in 0..(batches * 4) {
        let observed = Observed {
            run_name: "r",
            run_uid: "u",
            generation: 1,
            spec: &spec,
            status: &status,
            attempts: &attempts,
            now,
            memory: None,
            seat: None,
            retry_request: None,
            refused: None,
        };
        let planned = plan(&observed);
        if let Some(new) = planned.status {
            largest = largest.max(serde_json::to_vec(&new).unwrap().len());
            status = new;
        }
        attempts.retain(|a| {
            !planned
                .release
                .iter()
                .any(|p| a.pods.iter().any(|q| &q.name == p))
        });
        for launch in planned.launch {
            attempts.push(ObservedAttempt {
                range: launch.range,
                attempt: launch.attempt,
                job: Some(JobState {
                    name: format!("j{}", launch.range.start),
                    deleting: false,
                    finished: None,
                    created: None,
                    pod_refused: None,
                }),
                pods: vec![PodState {
                    name: format!("p{}-{}", launch.range.start, launch.attempt),
                    holds_result: true,
                    deleting: false,
                    exit: None,
                    guard_action: None,
                    memory_limit: launch.memory_limit,
                    resizes: 0,
                    ended: false,
                    waiting: None,
                }],
            });
        }
        if status.phase == Some(Phase::Succeeded) {
            break;
        }
        // A random running worker finishes (one in 50 fails once, like a flaky source).
        let running: Vec<usize> = (0..attempts.len())
            .filter(|i| attempts[*i].pods[0].exit.is_none())
            .collect();
        if running.is_empty() {
            continue;
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let index = running[(seed >> 33) as usize % running.len()];
        let attempt = &mut attempts[index];
        let fail = (seed >> 20) % 50 == 0 && attempt.attempt == 1;
        let range: RecordRange = attempt.range;
        let message = format!(
            r#"{{"records":{},"sums":{{"amount":1.5,"tax":0.25}},"outputs":["s3://bucket/run/part-{}.parquet"]}}"#,
            range.len(),
            range.start
        );
        attempt.pods[0].exit = Some(WorkerExit {
            exit_code: if fail { 1 } else { 0 },
            reason: if fail {
                "Error".into()
            } else {
                "Completed".into()
            },
            message: if fail {
                "connection reset by the source database".into()
            } else {
                message
            },
            finished_at: Some(now),
        });
        attempt.pods[0].ended = true;
        attempt.job.as_mut().unwrap().finished = Some(JobFinish {
            failed: fail,
            reason: String::new(),
            message: String::new(),
            at: Some(now),
        });
        // Retries are not delayed in this synthetic cluster.
        for pending in &mut status.pending {
            pending.not_before = None;
        }
    }
    assert_eq!(
        status.phase,
        Some(Phase::Succeeded),
        "synthetic run did not finish"
    );
    largest
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    json!({"cpu": model, "cores": cores, "memory_gib": mem_kib / 1024 / 1024, "cluster": "tests/cluster: Kubernetes v1.37.2, kwok v0.8.0, 4 fake nodes"})
}

fn table(r: &serde_json::Value) -> String {
    let mut out = String::from("| | batchguard | Indexed Job | ratio |\n|---|---|---|---|\n");
    for (i, p) in r["makespan"]["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        out += &format!(
            "| makespan, rep {} | {:.1} s | {:.1} s | {:.3} |\n",
            i + 1,
            p["batchguard_seconds"].as_f64().unwrap(),
            p["indexed_job_seconds"].as_f64().unwrap(),
            p["ratio"].as_f64().unwrap()
        );
    }
    out += &format!(
        "| median ratio | | | **{:.3}** |\n\n",
        r["makespan"]["median_ratio"].as_f64().unwrap()
    );
    out += "| operator requests per batch | |\n|---|---|\n";
    for (k, v) in r["requests_per_batch"]["by_verb"].as_object().unwrap() {
        out += &format!("| {k} | {:.2} |\n", v.as_f64().unwrap());
    }
    out += &format!(
        "| **writes** | **{:.2}** |\n\n",
        r["requests_per_batch"]["writes"].as_f64().unwrap()
    );
    out += "| batches | run time | operator peak RSS | operator CPU | largest status |\n|---|---|---|---|---|\n";
    for row in r["scale"].as_array().unwrap() {
        out += &format!(
            "| {} | {:.1} s | {:.1} MiB | {:.2} s | {:.1} KiB |\n",
            row["batches"],
            row["seconds"].as_f64().unwrap(),
            row["peak_rss_mib"].as_f64().unwrap(),
            row["cpu_seconds"].as_f64().unwrap(),
            row["status_bytes"].as_f64().unwrap() / 1024.0
        );
    }
    out += &format!(
        "| 100000 (planner, synthetic cluster) | | | | {:.1} KiB |\n",
        r["status_bytes_100k_planner"].as_f64().unwrap() / 1024.0
    );
    out
}

fn chart(r: &serde_json::Value, path: &str) {
    use plotters::prelude::*;
    let font = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf");
    let Ok(font) = font else {
        println!("no DejaVuSans font (apt-get install fonts-dejavu-core): chart skipped");
        return;
    };
    let _ = plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    );
    let root = BitMapBackend::new(path, (1100, 450)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let (left, right) = root.split_horizontally(550);

    let pairs = r["makespan"]["pairs"].as_array().unwrap();
    let top = pairs
        .iter()
        .flat_map(|p| {
            [
                p["batchguard_seconds"].as_f64().unwrap(),
                p["indexed_job_seconds"].as_f64().unwrap(),
            ]
        })
        .fold(0.0, f64::max)
        * 1.2;
    let mut c = ChartBuilder::on(&left)
        .caption("Makespan per repetition", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..(pairs.len() as f64), 0.0..top)
        .unwrap();
    c.configure_mesh()
        .y_desc("seconds")
        .x_desc("repetition")
        .draw()
        .unwrap();
    for (i, p) in pairs.iter().enumerate() {
        let x = i as f64;
        let bg = p["batchguard_seconds"].as_f64().unwrap();
        let job = p["indexed_job_seconds"].as_f64().unwrap();
        c.draw_series([Rectangle::new(
            [(x + 0.1, 0.0), (x + 0.45, bg)],
            BLUE.filled(),
        )])
        .unwrap();
        c.draw_series([Rectangle::new(
            [(x + 0.5, 0.0), (x + 0.85, job)],
            RED.filled(),
        )])
        .unwrap();
    }
    c.draw_series([Rectangle::new([(0.0, 0.0), (0.0, 0.0)], BLUE.filled())])
        .unwrap()
        .label("batchguard")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], BLUE.filled()));
    c.draw_series([Rectangle::new([(0.0, 0.0), (0.0, 0.0)], RED.filled())])
        .unwrap()
        .label("Indexed Job")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], RED.filled()));
    c.configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .unwrap();

    let scale = r["scale"].as_array().unwrap();
    let points: Vec<(f64, f64)> = scale
        .iter()
        .map(|s| {
            (
                (s["batches"].as_f64().unwrap()).log10(),
                s["peak_rss_mib"].as_f64().unwrap(),
            )
        })
        .collect();
    let top = points.iter().map(|p| p.1).fold(64.0, f64::max) * 1.2;
    let xmax = points.iter().map(|p| p.0).fold(1.0, f64::max) + 0.3;
    let mut c = ChartBuilder::on(&right)
        .caption("Operator peak RSS (MiB) vs batches", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(1.7..xmax, 0.0..top)
        .unwrap();
    c.configure_mesh()
        .x_desc("log10(batches)")
        .y_desc("MiB")
        .draw()
        .unwrap();
    c.draw_series(LineSeries::new(points.clone(), BLUE.stroke_width(2)))
        .unwrap();
    c.draw_series(points.iter().map(|p| Circle::new(*p, 4, BLUE.filled())))
        .unwrap();
    c.draw_series(LineSeries::new([(1.7, 64.0), (xmax, 64.0)], RED))
        .unwrap()
        .label("goal 64 MiB")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], RED));
    c.configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .unwrap();
    root.present().unwrap();
}
