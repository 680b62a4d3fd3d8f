//! Tests of reading and settling an attempt's outcome.

use super::*;
use crate::plan::{JobFinish, JobState, ObservedAttempt, PodState, WorkerExit, outcome_of};

const BATCH: RecordRange = RecordRange { start: 0, end: 100 };

fn policy(retry: &RetryPolicy) -> SettlePolicy<'_> {
    SettlePolicy {
        retry,
        on_pressure: OnPressure::Resume,
        on_oom: OnOom::Split,
        threshold: 85,
        limit_bytes: 2 << 30,
        max_bytes: None,
        items: None,
        seed: "uid",
    }
}

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn ended(exit_code: i32, reason: &str, message: &str) -> ObservedAttempt {
    ObservedAttempt {
        range: BATCH,
        attempt: 1,
        job: None,
        pods: vec![PodState {
            name: "p".into(),
            holds_result: true,
            deleting: false,
            guard_action: None,
            memory_limit: None,
            resizes: 0,
            ended: false,
            waiting: None,
            exit: Some(WorkerExit {
                exit_code,
                reason: reason.into(),
                message: message.into(),
                finished_at: None,
            }),
        }],
    }
}

#[test]
fn success_with_result_is_finished() {
    let outcome = outcome_of(&ended(0, "Completed", r#"{"records": 100}"#)).unwrap();
    assert_eq!(
        outcome,
        Outcome::Finished(WorkerResult {
            records: 100,
            ..Default::default()
        })
    );
}

#[test]
fn success_without_result_is_bad_output() {
    let Outcome::Failed {
        reason, message, ..
    } = outcome_of(&ended(0, "Completed", "")).unwrap()
    else {
        panic!("expected a failure");
    };
    assert_eq!(reason, BatchReason::BadOutput);
    assert!(message.contains("wrote no result"), "{message}");
}

#[test]
fn failure_keeps_reason_and_exit_code() {
    let Outcome::Failed {
        reason,
        message,
        partial,
    } = outcome_of(&ended(137, "OOMKilled", "")).unwrap()
    else {
        panic!("expected a failure");
    };
    assert_eq!(reason, BatchReason::OomKilled);
    assert_eq!(message, "worker exited with code 137");
    assert_eq!(partial, None);
}

#[test]
fn job_failure_without_pod_is_a_failure() {
    let attempt = ObservedAttempt {
        range: BATCH,
        attempt: 1,
        job: Some(JobState {
            name: "j".into(),
            deleting: false,
            finished: Some(JobFinish {
                failed: true,
                reason: "DeadlineExceeded".into(),
                message: "too slow".into(),
                at: None,
            }),
            created: None,
            pod_refused: None,
        }),
        pods: vec![],
    };
    let Outcome::Failed { reason, .. } = outcome_of(&attempt).unwrap() else {
        panic!()
    };
    assert_eq!(reason, BatchReason::from("DeadlineExceeded"));
}

#[test]
fn running_attempt_has_no_outcome() {
    let mut attempt = ended(0, "", "");
    attempt.pods[0].exit = None;
    assert_eq!(outcome_of(&attempt), None);
}

#[test]
fn failure_is_retried_with_backoff_until_attempts_run_out() {
    let retry = RetryPolicy::default();
    let policy = policy(&retry);
    let mut ledger = Ledger::default();
    let fail = || Outcome::Failed {
        reason: "Error".into(),
        message: "boom".into(),
        partial: None,
    };

    let first = settle(&mut ledger, Ran::new(BATCH, 1), fail(), &policy, now());
    assert!(matches!(first, Settled::Retrying { delay_seconds, .. } if delay_seconds <= 10));
    assert_eq!(ledger.pending.len(), 1);
    assert_eq!(
        (ledger.pending[0].attempt, ledger.pending[0].failures),
        (2, 1)
    );

    settle(&mut ledger, Ran::new(BATCH, 2), fail(), &policy, now());
    assert_eq!(
        (ledger.pending[0].attempt, ledger.pending[0].failures),
        (3, 2)
    );

    let last = settle(&mut ledger, Ran::new(BATCH, 3), fail(), &policy, now());
    assert!(
        matches!(last, Settled::FailedForGood { ref message, .. } if message.contains("no retries left"))
    );
    assert!(ledger.pending.is_empty());
    assert_eq!(ledger.failed.to_string(), "0-99");
    assert_eq!(ledger.failed_batches, 1);
    assert_eq!(ledger.failures.len(), 3);
}

#[test]
fn a_result_the_aggregate_refuses_uses_up_an_attempt_like_any_failure() {
    let retry = RetryPolicy::default();
    let mut ledger = Ledger::default();
    let huge = |records| {
        Outcome::Finished(WorkerResult {
            records,
            sums: [("pay".to_string(), f64::MAX)].into(),
            ..Default::default()
        })
    };
    let first = RecordRange::new(100, 200);
    settle(
        &mut ledger,
        Ran::new(first, 1),
        huge(100),
        &policy(&retry),
        now(),
    );
    for attempt in 1..retry.max_attempts {
        let settled = settle(
            &mut ledger,
            Ran::new(BATCH, attempt),
            huge(100),
            &policy(&retry),
            now(),
        );
        assert!(
            matches!(settled, Settled::Retrying { ref reason, .. } if *reason == BatchReason::BadOutput),
            "{settled:?}"
        );
        assert_eq!(ledger.pending[0].failures, attempt, "failures add up");
    }
    let last = settle(
        &mut ledger,
        Ran::new(BATCH, retry.max_attempts),
        huge(100),
        &policy(&retry),
        now(),
    );
    assert!(
        matches!(last, Settled::FailedForGood { ref message, .. } if message.contains("finite")),
        "{last:?}"
    );
    assert_eq!(
        ledger.aggregate.sums["pay"],
        f64::MAX,
        "the first batch's total stays"
    );
    assert_eq!(ledger.completed.to_string(), "100-199");
}

#[test]
fn checkpointed_result_is_counted_and_the_rest_resumes() {
    let retry = RetryPolicy::default();
    let mut ledger = Ledger::default();
    let result = WorkerResult {
        records: 40,
        resume_from: Some(40),
        ..Default::default()
    };
    let settled = settle(
        &mut ledger,
        Ran::new(BATCH, 1),
        Outcome::Finished(result),
        &policy(&retry),
        now(),
    );
    assert_eq!(
        settled,
        Settled::Resumed {
            remainder: RecordRange::new(40, 100)
        }
    );
    assert_eq!(ledger.completed.to_string(), "0-39");
    assert_eq!(ledger.aggregate.records, 40);
    let next = &ledger.pending[0];
    assert_eq!(
        (next.range, next.attempt, next.failures, next.not_before),
        (RecordRange::new(40, 100), 2, 0, None)
    );
}

#[test]
fn split_policy_queues_the_rest_in_halves() {
    let retry = RetryPolicy::default();
    let policy = SettlePolicy {
        on_pressure: OnPressure::Split,
        ..policy(&retry)
    };
    let mut ledger = Ledger::default();
    let result = WorkerResult {
        records: 20,
        resume_from: Some(20),
        ..Default::default()
    };
    settle(
        &mut ledger,
        Ran::new(BATCH, 1),
        Outcome::Finished(result),
        &policy,
        now(),
    );
    let ranges: Vec<_> = ledger.pending.iter().map(|p| p.range).collect();
    assert_eq!(
        ranges,
        vec![RecordRange::new(20, 60), RecordRange::new(60, 100)]
    );
}

#[test]
fn oom_killed_batch_is_retried_in_halves_without_using_an_attempt() {
    let retry = RetryPolicy::default();
    let mut ledger = Ledger::default();
    let oom = Outcome::Failed {
        reason: "OOMKilled".into(),
        message: "exit 137".into(),
        partial: None,
    };
    let settled = settle(&mut ledger, Ran::new(BATCH, 1), oom, &policy(&retry), now());
    assert_eq!(
        settled,
        Settled::SplitAfterOom {
            halves: BATCH.halves()
        }
    );
    assert!(
        ledger
            .pending
            .iter()
            .all(|p| p.failures == 0 && p.attempt == 2)
    );
    assert_eq!(ledger.guard.oom_kills, 1);
}

const GI: u64 = 1 << 30;

fn oom() -> Outcome {
    Outcome::Failed {
        reason: "OOMKilled".into(),
        message: "exit 137".into(),
        partial: None,
    }
}

fn growing(retry: &RetryPolicy, on_oom: OnOom) -> SettlePolicy<'_> {
    SettlePolicy {
        on_oom,
        max_bytes: Some(6 * GI),
        ..policy(retry)
    }
}

fn ran(range: RecordRange, attempt: u32, memory_limit: Option<u64>) -> Ran {
    Ran {
        range,
        attempt,
        memory_limit,
    }
}

#[test]
fn one_oom_killed_record_runs_again_with_twice_the_memory_up_to_the_ceiling() {
    let retry = RetryPolicy::default();
    let policy = growing(&retry, OnOom::Split);
    let mut ledger = Ledger::default();
    let record = RecordRange::new(7, 8);

    let settled = settle(
        &mut ledger,
        ran(record, 1, Some(2 * GI)),
        oom(),
        &policy,
        now(),
    );
    assert_eq!(
        settled,
        Settled::MoreMemory {
            cause: "OOMKilled".into(),
            remainder: record,
            from: 2 * GI,
            to: 4 * GI
        }
    );
    let next = &ledger.pending[0];
    assert_eq!((next.range, next.attempt, next.failures), (record, 2, 0));
    assert_eq!(next.memory_limit, Some(4 * GI));
    assert_eq!(ledger.failures[0].memory_limit.as_deref(), Some("2Gi"));

    // 4Gi doubled passes the 6Gi ceiling: the last try gets the ceiling itself.
    let settled = settle(
        &mut ledger,
        ran(record, 2, Some(4 * GI)),
        oom(),
        &policy,
        now(),
    );
    assert!(
        matches!(settled, Settled::MoreMemory { to, .. } if to == 6 * GI),
        "{settled:?}"
    );

    let settled = settle(
        &mut ledger,
        ran(record, 3, Some(6 * GI)),
        oom(),
        &policy,
        now(),
    );
    let Settled::FailedForGood { reason, message } = settled else {
        panic!("{settled:?}")
    };
    assert_eq!(reason, BatchReason::OomKilled);
    assert!(
        message.contains("record 7 needs more memory than the 6Gi ceiling")
            && message.contains("OOM-killed at 6Gi"),
        "{message}"
    );
    assert!(ledger.pending.is_empty());
    assert_eq!(ledger.failures.last().unwrap().message, message);
    assert_eq!(ledger.failed.to_string(), "7");
    assert_eq!((ledger.failed_batches, ledger.guard.oom_kills), (1, 3));
}

#[test]
fn a_record_too_large_is_named_by_its_item_in_items_mode() {
    let retry = RetryPolicy::default();
    let items = ["a".to_string(), "b".to_string(), "client-42".to_string()];
    let policy = SettlePolicy {
        items: Some(&items),
        ..growing(&retry, OnOom::Split)
    };
    let mut ledger = Ledger::default();
    let item = RecordRange::new(2, 3);
    let settled = settle(
        &mut ledger,
        ran(item, 4, Some(6 * GI)),
        oom(),
        &policy,
        now(),
    );
    assert!(
        matches!(&settled, Settled::FailedForGood { message, .. } if message.contains(r#"item 2 ("client-42") needs more memory"#)),
        "{settled:?}"
    );
}

#[test]
fn without_a_ceiling_memory_never_grows() {
    let retry = RetryPolicy::default();
    let policy = SettlePolicy {
        on_oom: OnOom::Grow,
        ..policy(&retry)
    };
    let mut ledger = Ledger::default();
    let settled = settle(&mut ledger, Ran::new(BATCH, 1), oom(), &policy, now());
    assert!(
        matches!(settled, Settled::SplitAfterOom { .. }),
        "{settled:?}"
    );
    let record = RecordRange::new(0, 1);
    let settled = settle(&mut ledger, Ran::new(record, 2), oom(), &policy, now());
    assert!(matches!(settled, Settled::Retrying { .. }), "{settled:?}");
    assert!(ledger.pending.iter().all(|p| p.memory_limit.is_none()));
}

#[test]
fn grow_retries_a_whole_batch_with_more_memory_then_halves_it_at_the_ceiling() {
    let retry = RetryPolicy::default();
    let policy = growing(&retry, OnOom::Grow);
    let mut ledger = Ledger::default();
    let settled = settle(
        &mut ledger,
        ran(BATCH, 1, Some(2 * GI)),
        oom(),
        &policy,
        now(),
    );
    assert!(matches!(settled, Settled::MoreMemory { remainder, .. } if remainder == BATCH));
    assert_eq!(ledger.pending[0].memory_limit, Some(4 * GI));

    ledger.pending.clear();
    let settled = settle(
        &mut ledger,
        ran(BATCH, 3, Some(6 * GI)),
        oom(),
        &policy,
        now(),
    );
    assert_eq!(
        settled,
        Settled::SplitAfterOom {
            halves: BATCH.halves()
        }
    );
    assert!(
        ledger
            .pending
            .iter()
            .all(|p| p.memory_limit == Some(6 * GI)),
        "the halves keep the memory they were grown to: {:?}",
        ledger.pending
    );
}

#[test]
fn a_record_the_guard_stops_without_progress_gets_more_memory_when_the_ceiling_allows() {
    let retry = RetryPolicy::default();
    let policy = growing(&retry, OnOom::Split);
    let mut ledger = Ledger::default();
    let record = RecordRange::new(3, 4);
    let stopped = Outcome::Stopped {
        action: GuardAction::Drain,
        partial: None,
    };
    let settled = settle(&mut ledger, ran(record, 1, None), stopped, &policy, now());
    assert_eq!(
        settled,
        Settled::MoreMemory {
            cause: "MemoryPressure".into(),
            remainder: record,
            from: 2 * GI,
            to: 4 * GI
        }
    );
    assert_eq!(ledger.guard.drains, 1);
    assert!(ledger.failed.is_empty());
}

#[test]
fn failing_worker_with_checkpoint_keeps_its_progress() {
    let retry = RetryPolicy::default();
    let mut ledger = Ledger::default();
    let partial = WorkerResult {
        records: 10,
        resume_from: Some(10),
        ..Default::default()
    };
    let failed = Outcome::Failed {
        reason: "Error".into(),
        message: "x".into(),
        partial: Some(partial),
    };
    settle(
        &mut ledger,
        Ran::new(BATCH, 1),
        failed,
        &policy(&retry),
        now(),
    );
    assert_eq!(ledger.completed.to_string(), "0-9");
    assert_eq!(ledger.pending[0].range, RecordRange::new(10, 100));
}

#[test]
fn drained_batch_resumes_from_checkpoint_without_using_an_attempt() {
    let retry = RetryPolicy::default();
    let mut ledger = Ledger::default();
    let partial = WorkerResult {
        records: 30,
        resume_from: Some(30),
        ..Default::default()
    };
    let stopped = Outcome::Stopped {
        action: GuardAction::Drain,
        partial: Some(partial),
    };
    let settled = settle(
        &mut ledger,
        Ran::new(BATCH, 1),
        stopped,
        &policy(&retry),
        now(),
    );
    assert_eq!(
        settled,
        Settled::Stopped {
            action: GuardAction::Drain,
            remainder: RecordRange::new(30, 100),
            pieces: vec![RecordRange::new(30, 100)]
        }
    );
    assert_eq!(ledger.completed.to_string(), "0-29");
    assert_eq!((ledger.guard.drains, ledger.drained), (1, 1));
    assert_eq!(
        (ledger.pending[0].failures, ledger.pending[0].attempt),
        (0, 2)
    );
    assert!(ledger.failures.is_empty(), "a drain is not a failure");
}

#[test]
fn stopped_worker_without_checkpoint_is_halved_until_one_record_fails() {
    let retry = RetryPolicy::default();
    let mut ledger = Ledger::default();
    let restart = || Outcome::Stopped {
        action: GuardAction::Restart,
        partial: None,
    };
    let settled = settle(
        &mut ledger,
        Ran::new(RecordRange::new(0, 2), 1),
        restart(),
        &policy(&retry),
        now(),
    );
    assert!(matches!(settled, Settled::Stopped { ref pieces, .. } if pieces.len() == 2));
    assert_eq!(ledger.guard.restarts, 1);
    let settled = settle(
        &mut ledger,
        Ran::new(RecordRange::new(0, 1), 2),
        restart(),
        &policy(&retry),
        now(),
    );
    let Settled::FailedForGood { reason, message } = settled else {
        panic!("{settled:?}")
    };
    assert_eq!(reason, BatchReason::MemoryPressure);
    assert!(
        message.contains("record 0 alone needs more than 85% of its 2Gi memory limit"),
        "{message}"
    );
}

#[test]
fn a_guard_stopped_pod_is_not_read_as_a_failure() {
    let mut attempt = ended(143, "Error", r#"{"records": 10, "resumeFrom": 10}"#);
    attempt.pods[0].guard_action = Some(GuardAction::Drain);
    let Some(Outcome::Stopped { action, partial }) = outcome_of(&attempt) else {
        panic!()
    };
    assert_eq!(action, GuardAction::Drain);
    assert_eq!(partial.and_then(|p| p.resume_from), Some(10));
}

const MEMORY_STOP: &str = r#"{"records": 30, "resumeFrom": 30, "stoppedFor": "memory",
    "memory": {"workingSetBytes": 117440512, "limitBytes": 134217728}}"#;

#[test]
fn an_in_process_memory_stop_is_settled_as_one_drain() {
    let retry = RetryPolicy::default();
    let mut ledger = Ledger::default();
    let outcome = outcome_of(&ended(0, "Completed", MEMORY_STOP)).unwrap();
    let settled = settle(
        &mut ledger,
        Ran::new(BATCH, 1),
        outcome,
        &policy(&retry),
        now(),
    );
    let Settled::DrainedInProcess {
        seen,
        remainder,
        pieces,
    } = settled
    else {
        panic!("{settled:?}")
    };
    assert_eq!(seen.percent(), 87);
    assert_eq!(remainder, RecordRange::new(30, 100));
    assert_eq!(pieces, vec![RecordRange::new(30, 100)]);
    assert_eq!(ledger.completed.to_string(), "0-29");
    assert_eq!(ledger.aggregate.records, 30);
    assert_eq!((ledger.guard.drains, ledger.drained), (1, 1));
    assert_eq!(ledger.guard.peak_percent, 87);
    assert_eq!(ledger.pending[0].reason, BatchReason::Drained);
    assert!(ledger.failures.is_empty(), "a drain is not a failure");
}

#[test]
fn a_memory_stop_on_a_pod_the_operator_drained_is_counted_once_as_its_drain() {
    let retry = RetryPolicy::default();
    let mut ledger = Ledger::default();
    let mut attempt = ended(0, "Completed", MEMORY_STOP);
    attempt.pods[0].guard_action = Some(GuardAction::Drain);
    let outcome = outcome_of(&attempt).unwrap();
    let settled = settle(
        &mut ledger,
        Ran::new(BATCH, 1),
        outcome,
        &policy(&retry),
        now(),
    );
    assert!(matches!(settled, Settled::Stopped { .. }), "{settled:?}");
    assert_eq!((ledger.guard.drains, ledger.drained), (1, 1));
    assert_eq!(ledger.completed.to_string(), "0-29");
}

#[test]
fn an_in_process_stop_without_progress_is_halved_like_any_drain() {
    let retry = RetryPolicy::default();
    let mut ledger = Ledger::default();
    let stop = r#"{"records": 0, "resumeFrom": 0, "stoppedFor": "memory",
        "memory": {"workingSetBytes": 9, "limitBytes": 10}}"#;
    let outcome = outcome_of(&ended(0, "Completed", stop)).unwrap();
    let settled = settle(
        &mut ledger,
        Ran::new(BATCH, 1),
        outcome,
        &policy(&retry),
        now(),
    );
    assert!(
        matches!(settled, Settled::DrainedInProcess { ref pieces, .. } if pieces.len() == 2),
        "{settled:?}"
    );
}

#[test]
fn a_garbled_memory_stop_fails_the_attempt_as_bad_output() {
    let garbled = r#"{"records": 30, "resumeFrom": 30, "stoppedFor": "memory"}"#;
    let Some(Outcome::Failed {
        reason, message, ..
    }) = outcome_of(&ended(0, "Completed", garbled))
    else {
        panic!()
    };
    assert_eq!(reason, BatchReason::BadOutput);
    assert!(message.contains("stoppedFor"), "{message}");
}

#[test]
fn long_failure_messages_are_truncated_on_a_char_boundary() {
    let text = "é".repeat(600);
    let cut = truncate(&text, 511);
    assert!(cut.len() <= 514 && cut.ends_with('…'));
}
