//! The termination message: one JSON object of at most 4 KiB, e.g.
//! `{"records": 5000, "sums": {"gross_pay": 1234.5}, "outputs": ["s3://…"], "resumeFrom": 3200}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plan::RecordRange;

/// Largest termination message Kubernetes keeps (the kubelet truncates longer ones).
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// What a worker reports about its batch.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerResult {
    /// Records processed.
    pub records: u64,
    /// Per-key numeric totals, summed across batches.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sums: BTreeMap<String, f64>,
    /// Output locations written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    /// Absolute offset of the first record not done, when the worker stopped early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_from: Option<u64>,
}

/// Why a termination message is not a usable result; the text reaches the run's status.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BadOutput {
    #[error("the worker exited successfully but wrote no result to /dev/termination-log")]
    Missing,
    #[error("the termination message is {0} bytes, more than the {MAX_MESSAGE_BYTES} allowed")]
    TooLarge(usize),
    #[error("the termination message is not a valid result: {0}")]
    Invalid(String),
    #[error("sum {0:?} is not a finite number")]
    NonFiniteSum(String),
    #[error("resumeFrom {resume_from} is outside the batch {range}")]
    ResumeOutsideBatch {
        resume_from: u64,
        range: RecordRange,
    },
}

impl WorkerResult {
    /// Reads a termination message for the batch `range`.
    pub fn parse(message: &str, range: RecordRange) -> Result<Self, BadOutput> {
        let trimmed = message.trim();
        if trimmed.is_empty() {
            return Err(BadOutput::Missing);
        }
        if message.len() > MAX_MESSAGE_BYTES {
            return Err(BadOutput::TooLarge(message.len()));
        }
        let result: WorkerResult =
            serde_json::from_str(trimmed).map_err(|e| BadOutput::Invalid(e.to_string()))?;
        if let Some((key, _)) = result.sums.iter().find(|(_, v)| !v.is_finite()) {
            return Err(BadOutput::NonFiniteSum(key.clone()));
        }
        if let Some(resume_from) = result.resume_from
            && (resume_from < range.start || resume_from > range.end)
        {
            return Err(BadOutput::ResumeOutsideBatch { resume_from, range });
        }
        Ok(result)
    }

    /// The records this result covers: the whole batch, or up to `resumeFrom`.
    pub fn done(&self, range: RecordRange) -> RecordRange {
        RecordRange::new(range.start, self.resume_from.unwrap_or(range.end))
    }

    /// The records left to do (empty when the batch finished).
    pub fn remainder(&self, range: RecordRange) -> RecordRange {
        RecordRange::new(self.resume_from.unwrap_or(range.end), range.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: RecordRange = RecordRange {
        start: 100,
        end: 200,
    };

    #[test]
    fn full_result_is_read() {
        let r = WorkerResult::parse(
            r#"{"records": 100, "sums": {"gross_pay": 12.5}, "outputs": ["s3://b/p-1"]}"#,
            BATCH,
        )
        .unwrap();
        assert_eq!(r.records, 100);
        assert_eq!(r.sums["gross_pay"], 12.5);
        assert_eq!(r.outputs, vec!["s3://b/p-1"]);
        assert_eq!(r.done(BATCH), BATCH);
        assert!(r.remainder(BATCH).is_empty());
    }

    #[test]
    fn checkpoint_splits_done_from_remainder() {
        let r = WorkerResult::parse(r#"{"records": 32, "resumeFrom": 132}"#, BATCH).unwrap();
        assert_eq!(r.done(BATCH), RecordRange::new(100, 132));
        assert_eq!(r.remainder(BATCH), RecordRange::new(132, 200));
    }

    #[test]
    fn empty_message_is_missing_output() {
        assert_eq!(WorkerResult::parse("  \n", BATCH), Err(BadOutput::Missing));
    }

    #[test]
    fn malformed_json_is_bad_output() {
        let err = WorkerResult::parse(r#"{"records": 10"#, BATCH).unwrap_err();
        assert!(matches!(err, BadOutput::Invalid(_)), "{err}");
        assert!(err.to_string().contains("not a valid result"));
    }

    #[test]
    fn wrong_types_are_bad_output() {
        for text in [
            r#"{"records": "ten"}"#,
            r#"{"records": -1}"#,
            r#"{"records": 1, "sums": {"a": "x"}}"#,
            r#"{"records": 1, "outputs": "s3://one"}"#,
            r#"[1, 2]"#,
            r#"{"sums": {}}"#,
        ] {
            let err = WorkerResult::parse(text, BATCH).unwrap_err();
            assert!(matches!(err, BadOutput::Invalid(_)), "{text}: {err}");
        }
    }

    #[test]
    fn oversized_message_is_bad_output() {
        let big = format!(r#"{{"records": 1, "outputs": ["{}"]}}"#, "x".repeat(5000));
        assert_eq!(
            WorkerResult::parse(&big, BATCH),
            Err(BadOutput::TooLarge(big.len()))
        );
    }

    #[test]
    fn resume_outside_the_batch_is_bad_output() {
        let err = WorkerResult::parse(r#"{"records": 1, "resumeFrom": 250}"#, BATCH).unwrap_err();
        assert_eq!(
            err,
            BadOutput::ResumeOutsideBatch {
                resume_from: 250,
                range: BATCH
            }
        );
        assert!(err.to_string().contains("outside the batch 100-199"));
    }
}
