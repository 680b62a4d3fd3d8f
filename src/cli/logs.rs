//! `logs RUN --failed`: the logs of the worker pods of failed batches, while the operator
//! retains them (`spec.retention.failedSeconds`).

use std::process::ExitCode;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{ListParams, LogParams};

use super::client::{CliError, Target, api_error};
use crate::api::kube_facts::{pod_phase, terminated};
use crate::api::labels::{ATTEMPT, RANGE_END, RANGE_START, RUN_UID};
use crate::api::worker_pod::worker_container;

pub async fn run(target: &Target, name: &str) -> Result<ExitCode, CliError> {
    let run = target.run(name).await?;
    let pods = target.api::<Pod>();
    let selector = format!("{RUN_UID}={}", run.uid().unwrap_or_default());
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api_error)?;
    let worker = worker_container(&run);
    let failed: Vec<&Pod> = list
        .items
        .iter()
        .filter(|p| failure(p, &worker).is_some())
        .collect();
    if failed.is_empty() {
        println!(
            "No failed batch pods of {name} are left (failed pods are kept for spec.retention.failedSeconds = {}s).",
            run.spec.retention.failed_seconds
        );
        return Ok(ExitCode::SUCCESS);
    }
    for pod in failed {
        let labels = pod.labels();
        let end: u64 = labels
            .get(RANGE_END)
            .and_then(|e| e.parse().ok())
            .unwrap_or(0);
        println!(
            "==> pod {} (records {}-{}, attempt {}): {} <==",
            pod.name_any(),
            labels.get(RANGE_START).map(String::as_str).unwrap_or("?"),
            end.saturating_sub(1),
            labels.get(ATTEMPT).map(String::as_str).unwrap_or("?"),
            failure(pod, &worker).unwrap_or_default()
        );
        let params = LogParams {
            container: Some(worker.clone()),
            ..Default::default()
        };
        match pods.logs(&pod.name_any(), &params).await {
            Ok(text) if text.is_empty() => println!("(no output)"),
            Ok(text) => println!("{}", text.trim_end()),
            Err(err) => println!("(logs unavailable: {err})"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Why the worker of a pod failed, if it did.
fn failure(pod: &Pod, worker: &str) -> Option<String> {
    let status = pod.status.as_ref()?;
    match terminated(pod, worker) {
        Some(t) if t.exit_code != 0 => Some(format!(
            "exit code {} ({})",
            t.exit_code,
            t.reason.clone().unwrap_or_default()
        )),
        Some(_) => None,
        None if pod_phase(pod) == "Failed" => {
            Some(status.reason.clone().unwrap_or_else(|| "pod failed".into()))
        }
        None => None,
    }
}
