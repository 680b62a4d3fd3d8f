//! A user's retry of the failed ranges (the `batchguard.dev/retry-failed` annotation): they go
//! back to the queue as fresh attempts, once per distinct annotation value (pure).

use super::{Ledger, ObservedAttempt, Requeued};
use crate::api::{BatchReason, RangeSet, RecordRange};

/// Queues every failed range again, cut into batches of `batch_size`, and forgets that they
/// failed (their failure records stay, as history). Returns how many batches were queued.
///
/// Each batch gets an attempt number above any attempt of its records still in the cluster,
/// so its Job name cannot collide with a retained failed Job and no old pod is mistaken for
/// its worker.
pub fn rerun_failed(ledger: &mut Ledger, attempts: &[ObservedAttempt], batch_size: u64) -> usize {
    let failed = std::mem::take(&mut ledger.failed);
    let batch_size = batch_size.max(1);
    let mut queued = 0;
    for range in failed.ranges() {
        let mut start = range.start;
        while start < range.end {
            let piece = RecordRange::new(start, (start + batch_size).min(range.end));
            let last_attempt = attempts
                .iter()
                .filter(|a| a.range.overlaps(&piece))
                .map(|a| a.attempt)
                .chain(
                    ledger
                        .failures
                        .iter()
                        .filter(|f| RangeSet::parse(&f.range).is_ok_and(|r| r.overlaps(&piece)))
                        .map(|f| f.attempt),
                )
                .max()
                .unwrap_or(0);
            ledger.pending.push(Requeued {
                range: piece,
                attempt: last_attempt + 1,
                failures: 0,
                not_before: None,
                reason: BatchReason::Retried,
                memory_limit: None,
            });
            queued += 1;
            start = piece.end;
        }
    }
    // The failed-batch budget (`maxFailedBatches`) starts afresh, or the run would stay stopped.
    ledger.failed_batches = 0;
    queued
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::FailureRecord;

    fn failed_attempt(start: u64, end: u64, attempt: u32) -> ObservedAttempt {
        ObservedAttempt {
            range: RecordRange::new(start, end),
            attempt,
            job: None,
            pods: vec![],
        }
    }

    #[test]
    fn failed_ranges_come_back_as_batches_with_fresh_attempts() {
        let mut ledger = Ledger::default();
        ledger.completed.insert(RecordRange::new(0, 100));
        ledger.failed.insert(RecordRange::new(100, 250));
        ledger.failed_batches = 2;
        ledger.failures.push(FailureRecord {
            range: "200-249".into(),
            attempt: 3,
            reason: "Error".into(),
            message: "boom".into(),
            memory_limit: None,
        });
        // The pod of attempt 3 of 100-199 is still retained for its logs.
        let attempts = [failed_attempt(100, 200, 3)];
        let queued = rerun_failed(&mut ledger, &attempts, 100);
        assert_eq!(queued, 2);
        assert!(ledger.failed.is_empty());
        assert_eq!(ledger.failed_batches, 0);
        let pending: Vec<_> = ledger
            .pending
            .iter()
            .map(|p| (p.range.to_string(), p.attempt, p.failures))
            .collect();
        assert_eq!(
            pending,
            vec![("100-199".to_string(), 4, 0), ("200-249".to_string(), 4, 0)]
        );
        assert_eq!(ledger.completed.to_string(), "0-99", "results stay counted");
        assert_eq!(ledger.failures.len(), 1, "history is kept");
    }

    #[test]
    fn nothing_failed_nothing_queued() {
        let mut ledger = Ledger::default();
        assert_eq!(rerun_failed(&mut ledger, &[], 10), 0);
        assert!(ledger.pending.is_empty());
    }
}
