//! One run growing from hundreds to tens of thousands of batches, each on a fresh operator:
//! its memory, CPU and status size.

use kube::Client;
use serde_json::json;

use crate::support::{Operator, TestNamespace};
use crate::workloads::*;

pub async fn growing_runs(client: &Client, sizes: &[u64]) -> serde_json::Value {
    println!("\n== one run, growing: {sizes:?} batches x 1s at parallelism 100");
    let mut rows = vec![];
    for &batches in sizes {
        let ns = TestNamespace::new(client, "scale").await;
        let operator = Operator::start_with_env(&ns.name, &[("RUST_LOG", "warn")]);
        wait_ready(&operator).await;
        let work = Work {
            batches,
            duration: "1s".into(),
            parallelism: 100,
        };
        let run = batch_run_of("scale", &work, None);
        let (seconds, status_bytes) =
            run_batchruns(client, &ns.name, vec![(run, batches * 10)]).await;
        let cpu = cpu_seconds(operator.pid());
        let rss = peak_rss_mib(operator.pid());
        println!(
            "{batches} batches: {seconds:.1} s, operator peak RSS {rss:.1} MiB, CPU {cpu:.2} s, status {status_bytes} bytes"
        );
        rows.push(
            json!({"batches": batches, "seconds": seconds, "peak_rss_mib": rss,
            "cpu_seconds": cpu, "status_bytes": status_bytes}),
        );
        // The operator releases its runs' finalizers: clean up before it stops.
        settle(client, &ns.name).await;
        drop(operator);
    }
    json!(rows)
}
