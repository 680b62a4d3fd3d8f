//! `retry RUN --failed`: asks the operator to run the failed ranges again by setting the run's
//! `batchguard.dev/retry-failed` annotation to a new value (the time of the request). The
//! operator acts once per value and records it in `status.retriedFailed`.

use std::process::ExitCode;

use kube::api::{Patch, PatchParams};

use super::client::{CliError, Target, api_error};
use crate::api::labels::RETRY_FAILED;

pub async fn run(target: &Target, name: &str) -> Result<ExitCode, CliError> {
    let run = target.run(name).await?;
    let failed = run
        .status
        .as_ref()
        .map(|s| s.failed.clone())
        .unwrap_or_default();
    if failed.is_empty() {
        println!("Nothing to retry: {name} has no failed records.");
        return Ok(ExitCode::SUCCESS);
    }
    let token = jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {RETRY_FAILED: token}}});
    target
        .runs()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_error)?;
    println!(
        "Retry requested for records {failed} of {name} ({RETRY_FAILED}={token}).\nFollow it with: kubectl batchguard watch {name}"
    );
    Ok(ExitCode::SUCCESS)
}
