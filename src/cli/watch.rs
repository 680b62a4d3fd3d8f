//! `watch RUN`: follows a run to its end. On a terminal: a progress bar of records with rate
//! and ETA, the running workers with their memory against the threshold, and the run's Events
//! as they happen. Elsewhere (CI logs): the same as plain lines, printed when something
//! changes. Exits 0 when the run succeeds and 1 when it fails, like a `kubectl wait` that
//! shows its work.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::ResourceExt;
use kube::api::ListParams;

use super::client::{CliError, Target, api_error};
use super::format::{finished, phase, progress};
use crate::api::kube_facts::pod_phase;
use crate::api::labels::RUN_UID;
use crate::api::worker_pod::{WorkerSpec, worker_of};
use crate::api::{BatchRun, Phase};
use crate::prometheus::promql::{MemoryMetric, WorkerGroup, worker_memory_query};
use crate::prometheus::{Prometheus, PrometheusFlags};

pub async fn run(
    target: &Target,
    name: &str,
    interval: u64,
    prometheus: &PrometheusFlags,
) -> Result<ExitCode, CliError> {
    let first = target.run(name).await?;
    let prometheus = match &prometheus.prometheus_url {
        Some(url) => Some(
            Prometheus::new(url, prometheus)
                .map_err(|e| CliError::Other(format!("Prometheus: {e}")))?,
        ),
        None => None,
    };
    let (start_done, total) = progress(&first);
    let started = Instant::now();
    let bar = std::io::stdout().is_terminal().then(|| {
        // On stdout, with the plain lines, whatever stderr is.
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stdout());
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40.cyan/blue} {pos}/{len} records  {per_sec}  ETA {eta}\n{msg}",
            )
            .expect("a valid progress template"),
        );
        bar
    });
    let say = |line: String| match &bar {
        Some(bar) => bar.println(line),
        None => println!("{line}"),
    };
    let mut seen_events = BTreeSet::new();
    let mut last_line = String::new();
    loop {
        let run = target.run(name).await?;
        for line in new_events(target, &run, &mut seen_events).await? {
            say(line);
        }
        let workers = workers(target, &run, prometheus.as_ref()).await?;
        let (done, total) = progress(&run);
        match &bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(workers);
            }
            None => {
                let line = format!(
                    "{} {}; {workers}",
                    phase(&run),
                    progress_line(done, total, start_done, started.elapsed())
                );
                // Rate and ETA change every second: print only when the run moved.
                let key = format!("{} {done} {workers}", phase(&run));
                if key != last_line {
                    println!("{line}");
                    last_line = key;
                }
            }
        }
        if let Some(end) = finished(&run) {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            let message = run
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.message.clone())
                .unwrap_or_default();
            return Ok(match end {
                Phase::Succeeded => {
                    println!("Succeeded: {message}");
                    ExitCode::SUCCESS
                }
                _ => {
                    println!("Failed: {message}");
                    ExitCode::from(1)
                }
            });
        }
        tokio::time::sleep(Duration::from_secs(interval.max(1))).await;
    }
}

/// `1200/4000 records (30%), 150 records/s, ETA 19s` (pure).
pub fn progress_line(done: u64, total: u64, start_done: u64, elapsed: Duration) -> String {
    let percent = (done * 100).checked_div(total).unwrap_or(0);
    let rate = done.saturating_sub(start_done) as f64 / elapsed.as_secs_f64().max(0.001);
    let eta = if rate > 0.0 && total > done {
        format!(", ETA {}s", ((total - done) as f64 / rate).ceil() as u64)
    } else {
        String::new()
    };
    format!("{done}/{total} records ({percent}%), {rate:.0} records/s{eta}")
}

/// The run's Events not printed yet, oldest first; a repeated Event prints again.
async fn new_events(
    target: &Target,
    run: &BatchRun,
    seen: &mut BTreeSet<String>,
) -> Result<Vec<String>, CliError> {
    let selector = format!("involvedObject.uid={}", run.uid().unwrap_or_default());
    let mut events = target
        .api::<Event>()
        .list(&ListParams::default().fields(&selector))
        .await
        .map_err(api_error)?
        .items;
    let when = |e: &Event| {
        e.series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
            .or(e.event_time.as_ref().map(|t| t.0))
            .or(e.last_timestamp.as_ref().map(|t| t.0))
            .unwrap_or_default()
    };
    events.sort_by_key(when);
    let mut lines = vec![];
    for event in events {
        let count = event
            .series
            .as_ref()
            .and_then(|s| s.count)
            .or(event.count)
            .unwrap_or(1);
        if seen.insert(format!("{}/{count}", event.name_any())) {
            lines.push(format!(
                "event {} {}: {}",
                event.type_.as_deref().unwrap_or("Normal"),
                event.reason.as_deref().unwrap_or(""),
                event.message.as_deref().unwrap_or("")
            ));
        }
    }
    Ok(lines)
}

/// `2 workers: payroll-0-a1-… 41%, payroll-5000-a1-… 86% (threshold 85%)`; without Prometheus
/// only the names.
async fn workers(
    target: &Target,
    run: &BatchRun,
    prometheus: Option<&Prometheus>,
) -> Result<String, CliError> {
    let selector = format!("{RUN_UID}={}", run.uid().unwrap_or_default());
    let pods = target
        .api::<Pod>()
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api_error)?;
    // Each pod through its own worker container, against its own limit: the run's spec may
    // have changed since its Job was built.
    let running: Vec<(String, WorkerSpec)> = pods
        .items
        .iter()
        .filter(|p| pod_phase(p) == "Running")
        .filter_map(|p| Some((p.name_any(), worker_of(p, None)?)))
        .collect();
    if running.is_empty() {
        return Ok("0 workers".into());
    }
    let namespace = run.namespace().unwrap_or_default();
    let groups = WorkerGroup::group(
        running
            .iter()
            .filter(|(_, w)| w.limit.is_some())
            .map(|(pod, w)| (namespace.as_str(), pod.as_str(), w.container.as_str())),
    );
    let memory = match prometheus {
        Some(prometheus) if !groups.is_empty() => {
            let query = worker_memory_query(MemoryMetric::WorkingSet, &groups, 90);
            prometheus.pod_values(&query).await.ok()
        }
        _ => None,
    };
    let shown: Vec<String> = running
        .iter()
        .map(|(pod, worker)| {
            let percent = memory
                .as_ref()
                .and_then(|m| m.iter().find(|(key, _)| &key.pod == pod))
                .zip(worker.limit.as_ref())
                .map(|((_, bytes), (_, limit))| format!(" {:.0}%", bytes / *limit as f64 * 100.0))
                .unwrap_or_default();
            format!("{pod}{percent}")
        })
        .collect();
    Ok(format!(
        "{} workers: {} (threshold {}%)",
        running.len(),
        shown.join(", "),
        run.spec.memory_guard.threshold
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_show_rate_and_eta() {
        let line = progress_line(1200, 4000, 200, Duration::from_secs(10));
        assert_eq!(line, "1200/4000 records (30%), 100 records/s, ETA 28s");
        assert_eq!(
            progress_line(0, 10, 0, Duration::from_secs(1)),
            "0/10 records (0%), 0 records/s"
        );
    }
}
