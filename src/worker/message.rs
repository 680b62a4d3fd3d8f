//! The termination message: one JSON object of at most 4 KiB, e.g.
//! `{"records": 5000, "sums": {"gross_pay": 1234.5}, "outputs": ["s3://…"], "resumeFrom": 3200}`.
//! A worker whose SDK guard stopped it for memory adds
//! `"stoppedFor": "memory", "memory": {"workingSetBytes": 114294784, "limitBytes": 134217728}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::RecordRange;

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
    /// Why the worker stopped before the end of its batch, when it says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_for: Option<StopReason>,
    /// What the in-process guard saw when it stopped the worker (with `stoppedFor: memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemorySeen>,
}

/// Why a worker stopped early on its own.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum StopReason {
    /// The SDK's in-process guard saw the container's cgroup at the run's threshold.
    Memory,
}

/// The container's memory as the in-process guard read it from its cgroup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemorySeen {
    /// Usage minus inactive file cache, like the kubelet's working set.
    pub working_set_bytes: u64,
    /// The cgroup's limit (which follows an in-place resize), else `BATCHGUARD_MEMORY_LIMIT_BYTES`.
    pub limit_bytes: u64,
    /// Share of the last poll interval in which all tasks stalled on memory (cgroup v2 PSI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pressure_percent: Option<f64>,
}

impl MemorySeen {
    /// The working set as a percent of the limit, at most 100.
    pub fn percent(&self) -> u8 {
        let percent =
            u128::from(self.working_set_bytes) * 100 / u128::from(self.limit_bytes.max(1));
        percent.min(100) as u8
    }
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
    #[error("stoppedFor: {0}")]
    BadStop(&'static str),
    #[error("resumeFrom {resume_from} is outside the batch {range}")]
    ResumeOutsideBatch {
        resume_from: u64,
        range: RecordRange,
    },
    #[error("records {records} is more than the {done} records of batch {range} it covers")]
    RecordsBeyondBatch {
        records: u64,
        done: u64,
        range: RecordRange,
    },
    #[error(
        "records {records} but batch {range} holds {expected}: a worker that did not finish its batch must say where to resume (resumeFrom)"
    )]
    RecordsShort {
        records: u64,
        expected: u64,
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
        result.check_records(range)?;
        result.check_stop()?;
        Ok(result)
    }

    /// A worker cannot report more records than it was given, nor fewer without saying where
    /// it stopped: either would inflate or silently drop records of the aggregate.
    fn check_records(&self, range: RecordRange) -> Result<(), BadOutput> {
        let done = self.done(range).len();
        if self.records > done {
            return Err(BadOutput::RecordsBeyondBatch {
                records: self.records,
                done,
                range,
            });
        }
        if self.resume_from.is_none() && self.records != done {
            return Err(BadOutput::RecordsShort {
                records: self.records,
                expected: done,
                range,
            });
        }
        Ok(())
    }

    fn check_stop(&self) -> Result<(), BadOutput> {
        let Some(StopReason::Memory) = self.stopped_for else {
            return match self.memory {
                Some(_) => Err(BadOutput::BadStop(
                    "a \"memory\" report comes only with \"stoppedFor\": \"memory\"",
                )),
                None => Ok(()),
            };
        };
        if self.resume_from.is_none() {
            return Err(BadOutput::BadStop(
                "a worker that stopped for memory must say where to resume (resumeFrom)",
            ));
        }
        let Some(seen) = &self.memory else {
            return Err(BadOutput::BadStop(
                "\"memory\" needs a \"memory\" object with workingSetBytes and limitBytes",
            ));
        };
        if seen.limit_bytes == 0 {
            return Err(BadOutput::BadStop("memory.limitBytes must be positive"));
        }
        if seen
            .pressure_percent
            .is_some_and(|p| !(0.0..=100.0).contains(&p))
        {
            return Err(BadOutput::BadStop(
                "memory.pressurePercent must be a number from 0 to 100",
            ));
        }
        Ok(())
    }

    /// What the in-process guard saw, when it is why the worker stopped.
    pub fn memory_stop(&self) -> Option<&MemorySeen> {
        match self.stopped_for {
            Some(StopReason::Memory) => self.memory.as_ref(),
            None => None,
        }
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
    fn a_memory_stop_is_read_with_what_the_guard_saw() {
        let r = WorkerResult::parse(
            r#"{"records": 30, "resumeFrom": 130, "stoppedFor": "memory",
                "memory": {"workingSetBytes": 115343360, "limitBytes": 134217728}}"#,
            BATCH,
        )
        .unwrap();
        let seen = r.memory_stop().unwrap();
        assert_eq!(seen.percent(), 85);
        assert_eq!(r.remainder(BATCH), RecordRange::new(130, 200));
        assert!(
            WorkerResult::parse(r#"{"records": 100}"#, BATCH)
                .unwrap()
                .memory_stop()
                .is_none()
        );
    }

    #[test]
    fn a_garbled_memory_stop_is_bad_output() {
        let memory = r#""memory": {"workingSetBytes": 1, "limitBytes": 2}"#;
        for (text, says) in [
            (r#"{"records": 1, "resumeFrom": 101, "stoppedFor": "boredom"}"#.to_string(), "not a valid result"),
            (r#"{"records": 1, "resumeFrom": 101, "stoppedFor": 7}"#.into(), "not a valid result"),
            (r#"{"records": 1, "resumeFrom": 101, "stoppedFor": "memory"}"#.into(), "needs a \"memory\" object"),
            (format!(r#"{{"records": 100, "stoppedFor": "memory", {memory}}}"#), "where to resume"),
            (format!(r#"{{"records": 1, "resumeFrom": 101, {memory}}}"#), "comes only with"),
            (r#"{"records": 1, "resumeFrom": 101, "stoppedFor": "memory", "memory": {"workingSetBytes": 1, "limitBytes": 0}}"#.into(), "positive"),
            (r#"{"records": 1, "resumeFrom": 101, "stoppedFor": "memory", "memory": {"workingSetBytes": -1, "limitBytes": 2}}"#.into(), "not a valid result"),
            (r#"{"records": 1, "resumeFrom": 101, "stoppedFor": "memory", "memory": {"workingSetBytes": 1, "limitBytes": 2, "mood": 3}}"#.into(), "not a valid result"),
            (r#"{"records": 1, "resumeFrom": 101, "stoppedFor": "memory", "memory": {"workingSetBytes": 1, "limitBytes": 2, "pressurePercent": 250}}"#.into(), "0 to 100"),
        ] {
            let err = WorkerResult::parse(&text, BATCH).unwrap_err();
            assert!(err.to_string().contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn records_beyond_the_batch_are_bad_output() {
        let err = WorkerResult::parse(r#"{"records": 101}"#, BATCH).unwrap_err();
        assert!(matches!(
            err,
            BadOutput::RecordsBeyondBatch {
                records: 101,
                done: 100,
                ..
            }
        ));
        let err = WorkerResult::parse(r#"{"records": 31, "resumeFrom": 130}"#, BATCH).unwrap_err();
        assert!(
            err.to_string().contains("more than the 30 records"),
            "{err}"
        );
    }

    #[test]
    fn fewer_records_without_a_resume_point_are_bad_output() {
        let err = WorkerResult::parse(r#"{"records": 37}"#, BATCH).unwrap_err();
        assert_eq!(
            err,
            BadOutput::RecordsShort {
                records: 37,
                expected: 100,
                range: BATCH
            }
        );
        assert!(err.to_string().contains("resumeFrom"), "{err}");
        // With a resume point, a prefix may hold fewer records than it spans: none are lost,
        // the rest runs again.
        assert!(WorkerResult::parse(r#"{"records": 20, "resumeFrom": 130}"#, BATCH).is_ok());
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
