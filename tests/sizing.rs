//! Adaptive batch size on the local cluster's real node: a Python worker with a large fixed
//! footprint (about 75 MiB before its first record) and half a MiB per record under a 128Mi
//! limit. Batches of 40 peak near 95 MiB, above the sizing target, so the operator shrinks
//! them; once batches of clearly different sizes are seen it tells the baseline from the cost
//! per record and goes back to batches of 40, which fit. Charging the baseline to the records
//! would have settled near 24.
//!
//! Needs `tests/cluster/up` run as root (BATCHGUARD_REAL_NODE and the worker image).

mod support;

use std::time::Duration;

use batchguard::api::Phase;
use kube::api::PostParams;
use support::*;

const RECORDS: u64 = 400;
const MIB: u64 = 1 << 20;

/// 60 MiB of ballast, then half a MiB per record every 0.1 s; the peak is held for 3 s so
/// that the guard's samples (1 s housekeeping, scrape and poll) see it.
const WORKER: &str = r#"
import time
from batchguard_worker import Batch
ballast = b"\x01" * (60 << 20)
held = []
with Batch.from_env() as batch:
    for chunk in batch.chunks(1):
        held.append(b"\x01" * (512 << 10))
        time.sleep(0.1)
        batch.add_sum("total", chunk.start)
        batch.done(chunk)
    time.sleep(3)
"#;

#[tokio::test]
async fn a_worker_with_a_large_baseline_keeps_its_batch_size() {
    let node = RealNode::from_env();
    let Setup {
        client: _,
        ns: _ns,
        operator,
        runs,
    } = Setup::new("sizing").await;
    let extra = "  retry: {backoff: {baseSeconds: 1, maxSeconds: 2}}";
    let run = python_run(
        &node,
        "baseline",
        (RECORDS, 40, 2),
        ("128Mi", "128Mi"),
        WORKER,
        extra,
    );
    runs.create(&PostParams::default(), &run).await.unwrap();

    let run = wait_finished(&runs, "baseline", Duration::from_secs(400), &operator).await;
    let status = run.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert_eq!(status.aggregate.records, RECORDS);
    assert_eq!(
        status.aggregate.sums.get("total"),
        Some(&sum_of_offsets(RECORDS))
    );
    let guard = &status.guard;
    let samples = &guard.memory_samples;
    assert!(
        samples.iter().any(|s| s.records < 40),
        "batches of 40 came near the threshold and were shrunk: {guard:#?}"
    );
    assert!(
        (50 * MIB..110 * MIB).contains(&guard.baseline_bytes),
        "a baseline of about 75 MiB: {guard:#?}"
    );
    assert!(
        (MIB / 5..2 * MIB).contains(&guard.bytes_per_record),
        "about half a MiB per record: {guard:#?}"
    );
    assert!(
        guard.batch_size >= 36,
        "back to batches that fit, not shrunk to a few records: {guard:#?}"
    );
    assert_eq!(guard.oom_kills, 0, "{guard:#?}");
}
