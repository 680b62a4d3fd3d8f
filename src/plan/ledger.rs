//! The ledger: the part of the status that must never lose or double-count a result
//! (completed and failed ranges, queued ranges, the aggregate, counters), in a working form.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{
    Aggregate, BatchReason, BatchRunStatus, FailureRecord, GuardStatus, MAX_FAILURES_SHOWN,
    MAX_OUTPUTS_SHOWN, MAX_SUM_KEYS, PendingBatch, bytes_quantity, memory_bytes,
};
use crate::api::{ParseRangeSetError, RangeSet, RecordRange};
use crate::worker::WorkerResult;

/// A range queued again, with the attempt it runs as next.
#[derive(Clone, Debug, PartialEq)]
pub struct Requeued {
    pub range: RecordRange,
    pub attempt: u32,
    pub failures: u32,
    pub not_before: Option<Timestamp>,
    pub reason: BatchReason,
    /// Bytes of memory limit its next Job gets, when grown past the spec's after an OOM kill.
    pub memory_limit: Option<u64>,
}

/// The exactly-once ledger of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ledger {
    pub completed: RangeSet,
    pub failed: RangeSet,
    pub pending: Vec<Requeued>,
    pub aggregate: Aggregate,
    pub succeeded: u64,
    pub failed_batches: u64,
    pub drained: u64,
    pub guard: GuardStatus,
    pub failures: Vec<FailureRecord>,
    /// The last retry request acted on, written with the ranges it queued.
    pub retried_failed: Option<String>,
}

/// Why a result cannot enter the aggregate (it fails the attempt as `BadOutput`).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refused {
    #[error("the result adds sum keys beyond the {MAX_SUM_KEYS} a run may hold")]
    TooManySumKeys,
    #[error("sum {0:?} would leave the finite numbers once added to the run's total")]
    SumOverflow(String),
    #[error("the run's {0} count would overflow")]
    CountOverflow(&'static str),
}

impl Ledger {
    pub fn from_status(status: &BatchRunStatus) -> Result<Self, ParseRangeSetError> {
        Ok(Self {
            completed: RangeSet::parse(&status.completed)?,
            failed: RangeSet::parse(&status.failed)?,
            pending: status.pending.iter().map(Requeued::from_status).collect(),
            aggregate: status.aggregate.clone(),
            succeeded: status.batches.succeeded,
            failed_batches: status.batches.failed,
            drained: status.batches.drained,
            guard: status.guard.clone(),
            failures: status.failures.clone(),
            retried_failed: status.retried_failed.clone(),
        })
    }

    /// Writes the ledger into a status (other status fields are left alone).
    pub fn write_to(&self, status: &mut BatchRunStatus) {
        status.completed = self.completed.to_string();
        status.failed = self.failed.to_string();
        status.pending = self.pending.iter().map(Requeued::to_status).collect();
        status.aggregate = self.aggregate.clone();
        status.batches.succeeded = self.succeeded;
        status.batches.failed = self.failed_batches;
        status.batches.drained = self.drained;
        status.batches.retrying = self.pending.len() as u64;
        status.guard = self.guard.clone();
        status.failures = self.failures.clone();
        status.retried_failed = self.retried_failed.clone();
    }

    /// Records settled one way or another: completed or failed for good.
    pub fn settled(&self) -> RangeSet {
        let mut settled = self.completed.clone();
        settled.union(&self.failed);
        settled
    }

    /// Every record the ledger accounts for: settled or queued again.
    pub fn covered(&self) -> RangeSet {
        let mut covered = self.settled();
        self.pending.iter().for_each(|p| covered.insert(p.range));
        covered
    }

    pub fn pending_index(&self, range: RecordRange, attempt: u32) -> Option<usize> {
        self.pending
            .iter()
            .position(|p| p.range == range && p.attempt == attempt)
    }

    /// Whether the result of attempt (range, attempt) is still to be written.
    ///
    /// Before an attempt settles, none of its records are in the ledger except its own queue
    /// entry; settling moves all of them into completed, failed or a later attempt's entry.
    /// `covered` is `self.covered()`, computed once by callers that ask for many attempts.
    pub fn awaits(&self, covered: &RangeSet, range: RecordRange, attempt: u32) -> bool {
        self.pending_index(range, attempt).is_some() || (attempt == 1 && !covered.overlaps(&range))
    }

    /// Adds a worker's result for `done` records to the aggregate, all of it or nothing.
    pub fn add_result(&mut self, done: RecordRange, result: &WorkerResult) -> Result<(), Refused> {
        let new_keys = result
            .sums
            .keys()
            .filter(|k| !self.aggregate.sums.contains_key(*k))
            .count();
        if self.aggregate.sums.len() + new_keys > MAX_SUM_KEYS {
            return Err(Refused::TooManySumKeys);
        }
        let records = (self.aggregate.records)
            .checked_add(result.records)
            .ok_or(Refused::CountOverflow("records"))?;
        let outputs = (self.aggregate.outputs.count)
            .checked_add(result.outputs.len() as u64)
            .ok_or(Refused::CountOverflow("outputs"))?;
        let mut sums = Vec::with_capacity(result.sums.len());
        for (key, value) in &result.sums {
            let total = self.aggregate.sums.get(key).copied().unwrap_or(0.0) + value;
            if !total.is_finite() {
                return Err(Refused::SumOverflow(key.clone()));
            }
            sums.push((key.clone(), total));
        }
        self.completed.insert(done);
        self.aggregate.records = records;
        self.aggregate.sums.extend(sums);
        self.aggregate.outputs.count = outputs;
        let shown = &mut self.aggregate.outputs.first;
        let room = MAX_OUTPUTS_SHOWN.saturating_sub(shown.len());
        shown.extend(result.outputs.iter().take(room).cloned());
        Ok(())
    }

    pub fn record_failure(&mut self, record: FailureRecord) {
        self.failures.push(record);
        let excess = self.failures.len().saturating_sub(MAX_FAILURES_SHOWN);
        self.failures.drain(..excess);
    }
}

impl Requeued {
    fn from_status(p: &PendingBatch) -> Self {
        Self {
            range: RecordRange::new(p.start, p.end.max(p.start)),
            attempt: p.attempt,
            failures: p.failures,
            not_before: p.not_before.as_ref().map(|t| t.0),
            reason: p.reason.clone(),
            // A quantity the operator wrote itself; unreadable means the spec's limit.
            memory_limit: p.memory_limit.as_deref().and_then(|q| memory_bytes(q).ok()),
        }
    }

    fn to_status(&self) -> PendingBatch {
        PendingBatch {
            start: self.range.start,
            end: self.range.end,
            attempt: self.attempt,
            failures: self.failures,
            not_before: self.not_before.map(Time),
            reason: self.reason.clone(),
            memory_limit: self.memory_limit.map(bytes_quantity),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn result(records: u64, sum: f64, outputs: &[&str]) -> WorkerResult {
        WorkerResult {
            records,
            sums: BTreeMap::from([("amount".to_string(), sum)]),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn results_merge_into_the_aggregate() {
        let mut ledger = Ledger::default();
        ledger
            .add_result(RecordRange::new(0, 10), &result(10, 1.5, &["a"]))
            .unwrap();
        ledger
            .add_result(RecordRange::new(10, 20), &result(10, 2.0, &["b", "c"]))
            .unwrap();
        assert_eq!(ledger.aggregate.records, 20);
        assert_eq!(ledger.aggregate.sums["amount"], 3.5);
        assert_eq!(ledger.aggregate.outputs.count, 3);
        assert_eq!(ledger.completed.to_string(), "0-19");
    }

    #[test]
    fn output_list_is_bounded_but_counted() {
        let mut ledger = Ledger::default();
        for i in 0..50u64 {
            let name = format!("part-{i}");
            ledger
                .add_result(RecordRange::new(i, i + 1), &result(1, 0.0, &[&name]))
                .unwrap();
        }
        assert_eq!(ledger.aggregate.outputs.count, 50);
        assert_eq!(ledger.aggregate.outputs.first.len(), MAX_OUTPUTS_SHOWN);
        assert_eq!(ledger.aggregate.outputs.first[0], "part-0");
    }

    #[test]
    fn too_many_sum_keys_are_refused_without_partial_effect() {
        let mut ledger = Ledger::default();
        let mut wide = WorkerResult {
            records: 1,
            ..Default::default()
        };
        for i in 0..=MAX_SUM_KEYS {
            wide.sums.insert(format!("k{i}"), 1.0);
        }
        assert_eq!(
            ledger.add_result(RecordRange::new(0, 1), &wide),
            Err(Refused::TooManySumKeys)
        );
        assert_eq!(ledger, Ledger::default());
    }

    #[test]
    fn a_sum_that_would_overflow_is_refused_without_partial_effect() {
        let mut ledger = Ledger::default();
        let big = result(1, f64::MAX, &[]);
        ledger.add_result(RecordRange::new(0, 1), &big).unwrap();
        let before = ledger.clone();
        assert_eq!(
            ledger.add_result(RecordRange::new(1, 2), &big),
            Err(Refused::SumOverflow("amount".into()))
        );
        assert_eq!(ledger, before, "nothing of the refused result is kept");
        assert!(ledger.aggregate.sums["amount"].is_finite());
    }

    #[test]
    fn a_record_count_that_would_overflow_is_refused() {
        let mut ledger = Ledger::default();
        ledger.aggregate.records = u64::MAX - 1;
        let before = ledger.clone();
        assert_eq!(
            ledger.add_result(RecordRange::new(0, 2), &result(2, 0.0, &[])),
            Err(Refused::CountOverflow("records"))
        );
        assert_eq!(ledger, before);
    }

    #[test]
    fn failure_list_keeps_the_most_recent() {
        let mut ledger = Ledger::default();
        for attempt in 0..25 {
            ledger.record_failure(FailureRecord {
                range: "0-9".into(),
                attempt,
                reason: "Error".into(),
                message: String::new(),
                memory_limit: None,
            });
        }
        assert_eq!(ledger.failures.len(), MAX_FAILURES_SHOWN);
        assert_eq!(ledger.failures.last().unwrap().attempt, 24);
    }

    #[test]
    fn status_round_trip_keeps_the_ledger() {
        let mut ledger = Ledger::default();
        ledger
            .add_result(RecordRange::new(0, 10), &result(10, 1.0, &["x"]))
            .unwrap();
        ledger.failed.insert(RecordRange::new(50, 60));
        ledger.pending.push(Requeued {
            range: RecordRange::new(20, 30),
            attempt: 2,
            failures: 1,
            not_before: Some(Timestamp::from_second(1_800_000_000).unwrap()),
            reason: "OOMKilled".into(),
            memory_limit: Some(3 << 29),
        });
        let mut status = BatchRunStatus::default();
        ledger.write_to(&mut status);
        assert_eq!(Ledger::from_status(&status).unwrap(), ledger);
        assert_eq!(status.batches.retrying, 1);
    }

    #[test]
    fn an_attempt_awaits_settling_until_its_records_move() {
        let mut ledger = Ledger::default();
        let batch = RecordRange::new(0, 10);
        assert!(ledger.awaits(&ledger.covered(), batch, 1));
        ledger.pending.push(Requeued {
            range: batch,
            attempt: 2,
            failures: 1,
            not_before: None,
            reason: "Error".into(),
            memory_limit: None,
        });
        let covered = ledger.covered();
        assert!(
            !ledger.awaits(&covered, batch, 1),
            "attempt 1 settled into the queue entry of attempt 2"
        );
        assert!(ledger.awaits(&covered, batch, 2));
        ledger.pending.clear();
        ledger.completed.insert(batch);
        assert!(!ledger.awaits(&ledger.covered(), batch, 2));
    }
}
