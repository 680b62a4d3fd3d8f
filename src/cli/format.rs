//! Plain-text formatting shared by the subcommands (pure).

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{BatchRun, FailureRecord, Phase};

/// How `results` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// Columns padded to their widest cell, like kubectl's tables.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        padded.join("   ").trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `5s`, `3m`, `2h`, `4d`: the age format of kubectl.
pub fn age(since: Option<&Time>, now: Timestamp) -> String {
    let Some(since) = since else {
        return "-".into();
    };
    let seconds = now.duration_since(since.0).as_secs().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub fn phase(run: &BatchRun) -> String {
    run.status
        .as_ref()
        .and_then(|s| s.phase)
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| "Pending".into())
}

pub fn finished(run: &BatchRun) -> Option<Phase> {
    run.status
        .as_ref()
        .and_then(|s| s.phase)
        .filter(|p| matches!(p, Phase::Succeeded | Phase::Failed))
}

/// Records done and all records, from `status.progress` ("done/total").
pub fn progress(run: &BatchRun) -> (u64, u64) {
    run.status
        .as_ref()
        .and_then(|s| s.progress_counts())
        .unwrap_or_else(|| (0, crate::api::universe(&run.spec).len()))
}

/// `Heading:` and one indented line per failed attempt; nothing when there is none.
pub fn failures(heading: &str, failures: &[FailureRecord]) -> String {
    if failures.is_empty() {
        return String::new();
    }
    let mut out = format!("{heading}\n");
    for f in failures {
        let memory = f
            .memory_limit
            .as_ref()
            .map(|m| format!(" (limit {m})"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  records {} attempt {}{memory}: {}: {}\n",
            f.range, f.attempt, f.reason, f.message
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_to_the_widest_cell() {
        let text = table(
            &["NAME", "PHASE"],
            &[vec!["payroll-2026-11".into(), "Running".into()]],
        );
        assert_eq!(text, "NAME              PHASE\npayroll-2026-11   Running");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let at = |s: i64| Time(Timestamp::from_second(1_000_000 - s).unwrap());
        assert_eq!(age(Some(&at(5)), now), "5s");
        assert_eq!(age(Some(&at(600)), now), "10m");
        assert_eq!(age(Some(&at(10_800)), now), "3h");
        assert_eq!(age(Some(&at(345_600)), now), "4d");
        assert_eq!(age(None, now), "-");
    }
}
