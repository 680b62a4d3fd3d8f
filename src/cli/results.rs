//! `results RUN`: the aggregate, the outputs and the failures, as a table, JSON or YAML.

use std::fmt::Write;
use std::process::ExitCode;

use kube::ResourceExt;
use serde::Serialize;

use super::client::{CliError, Target};
use super::format::{Output, failures, phase, progress};
use crate::api::{Aggregate, BatchRun, FailureRecord};

/// The machine-readable results of a run (the `-o json|yaml` shape).
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Results {
    pub run: String,
    pub phase: String,
    pub records_done: u64,
    pub records_total: u64,
    pub completed: String,
    pub failed: String,
    pub aggregate: Aggregate,
    pub failures: Vec<FailureRecord>,
}

pub fn results_of(run: &BatchRun) -> Results {
    let status = run.status.clone().unwrap_or_default();
    let (done, total) = progress(run);
    Results {
        run: run.name_any(),
        phase: phase(run),
        records_done: done,
        records_total: total,
        completed: status.completed,
        failed: status.failed,
        aggregate: status.aggregate,
        failures: status.failures,
    }
}

pub async fn run(target: &Target, name: &str, output: Output) -> Result<ExitCode, CliError> {
    let results = results_of(&target.run(name).await?);
    let text = match output {
        Output::Json => {
            serde_json::to_string_pretty(&results).map_err(|e| CliError::Other(e.to_string()))?
        }
        Output::Yaml => {
            serde_yaml::to_string(&results).map_err(|e| CliError::Other(e.to_string()))?
        }
        Output::Table => table(&results),
    };
    println!("{}", text.trim_end());
    Ok(ExitCode::SUCCESS)
}

fn table(r: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Run:       {} ({})", r.run, r.phase);
    let _ = writeln!(
        out,
        "Records:   {} of {} done ({} reported by workers)",
        r.records_done, r.records_total, r.aggregate.records
    );
    let _ = writeln!(
        out,
        "Completed: {}",
        if r.completed.is_empty() {
            "-"
        } else {
            &r.completed
        }
    );
    let _ = writeln!(
        out,
        "Failed:    {}",
        if r.failed.is_empty() { "-" } else { &r.failed }
    );
    if !r.aggregate.sums.is_empty() {
        let _ = writeln!(out, "Sums:");
        for (key, value) in &r.aggregate.sums {
            let _ = writeln!(out, "  {key:<20} {value}");
        }
    }
    let outputs = &r.aggregate.outputs;
    let _ = writeln!(
        out,
        "Outputs:   {} (first {} listed)",
        outputs.count,
        outputs.first.len()
    );
    for location in &outputs.first {
        let _ = writeln!(out, "  {location}");
    }
    out.push_str(&failures("Failures (most recent):", &r.failures));
    out
}
