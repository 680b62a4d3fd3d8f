//! `status [RUN]`: all runs of the namespace as a table, or one run in detail.

use std::fmt::Write;
use std::process::ExitCode;

use kube::ResourceExt;

use super::client::{CliError, Target, api_error};
use super::format::{age, failures, phase, progress, table};
use crate::api::BatchRun;
use crate::api::RecordRange;

pub async fn run(target: &Target, name: Option<&str>) -> Result<ExitCode, CliError> {
    let now = jiff::Timestamp::now();
    match name {
        Some(name) => print!("{}", detail(&target.run(name).await?, now)),
        None => {
            let runs = target
                .runs()
                .list(&Default::default())
                .await
                .map_err(api_error)?;
            if runs.items.is_empty() {
                println!("No BatchRuns in namespace {}.", target.namespace);
            } else {
                println!("{}", runs_table(&runs.items, now));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One row per run: what people ask first.
pub fn runs_table(runs: &[BatchRun], now: jiff::Timestamp) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|run| {
            let status = run.status.clone().unwrap_or_default();
            let (done, total) = progress(run);
            let percent = (done * 100).checked_div(total).unwrap_or(0);
            vec![
                run.name_any(),
                phase(run),
                format!("{done}/{total} ({percent}%)"),
                status.batches.running.to_string(),
                status.guard.drains.to_string(),
                status.batches.failed.to_string(),
                format!("{}%", status.guard.peak_percent),
                age(run.metadata.creation_timestamp.as_ref(), now),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "PHASE", "PROGRESS", "RUNNING", "DRAINS", "FAILED", "PEAK MEM", "AGE",
        ],
        &rows,
    )
}

/// Everything about one run, in the order people read it.
pub fn detail(run: &BatchRun, now: jiff::Timestamp) -> String {
    let status = run.status.clone().unwrap_or_default();
    let spec = &run.spec;
    let (done, total) = progress(run);
    let mut out = String::new();
    let _ = writeln!(out, "Name:         {}", run.name_any());
    let _ = writeln!(out, "Namespace:    {}", run.namespace().unwrap_or_default());
    let _ = writeln!(out, "Phase:        {}", phase(run));
    let _ = writeln!(out, "Progress:     {done}/{total} records");
    let _ = writeln!(
        out,
        "Batches:      {} running, {} succeeded, {} failed, {} drained, {} queued again",
        status.batches.running,
        status.batches.succeeded,
        status.batches.failed,
        status.batches.drained,
        status.batches.retrying
    );
    let _ = writeln!(
        out,
        "Workers:      {} at once, memory {} request / {} limit{}{}",
        spec.parallelism,
        spec.resources.memory.request,
        spec.resources.memory.limit,
        spec.resources
            .memory
            .max
            .as_ref()
            .map(|m| format!(" (up to {m} after an OOM kill)"))
            .unwrap_or_default(),
        spec.queue
            .as_ref()
            .map(|q| format!(", queue {q}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "Memory guard: {:?} at {}%; peak {}%, {} drains, {} restarts, {} OOM kills",
        spec.memory_guard.action,
        spec.memory_guard.threshold,
        status.guard.peak_percent,
        status.guard.drains,
        status.guard.restarts,
        status.guard.oom_kills
    );
    let _ = writeln!(out, "Records done: {}", empty_dash(&status.completed));
    let _ = writeln!(out, "Failed:       {}", empty_dash(&status.failed));
    let _ = writeln!(
        out,
        "Age:          {}",
        age(run.metadata.creation_timestamp.as_ref(), now)
    );
    if !status.conditions.is_empty() {
        let _ = writeln!(out, "Conditions:");
        let rows: Vec<Vec<String>> = status
            .conditions
            .iter()
            .map(|c| {
                vec![
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                ]
            })
            .collect();
        for line in table(&["TYPE", "STATUS", "REASON", "MESSAGE"], &rows).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    let grown: Vec<String> = status
        .pending
        .iter()
        .filter_map(|p| {
            let limit = p.memory_limit.as_ref()?;
            let range = RecordRange::new(p.start, p.end.max(p.start));
            Some(format!(
                "  records {range} attempt {}: limit {limit}",
                p.attempt
            ))
        })
        .collect();
    if !grown.is_empty() {
        let _ = writeln!(out, "Queued with more memory:");
        grown.iter().for_each(|line| {
            let _ = writeln!(out, "{line}");
        });
    }
    out.push_str(&failures("Recent failures:", &status.failures));
    out
}

fn empty_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}
