//! Settling a finished attempt: how its outcome moves its records in the ledger (completed,
//! queued again, or failed for good), one function per outcome.

use jiff::Timestamp;

use super::{Ledger, Outcome, Requeued, retry_delay};
use crate::api::RecordRange;
use crate::api::{
    BatchReason, FailureRecord, GuardAction, OnOom, OnPressure, RetryPolicy, bytes_quantity,
};
use crate::worker::{MemorySeen, WorkerResult};

/// Longest failure message kept in status.
const MAX_FAILURE_MESSAGE: usize = 512;

/// A batch retried with more memory gets this many times the limit it ran out of, at most
/// `spec.resources.memory.max`; the request grows in proportion.
pub const MEMORY_GROWTH: u64 = 2;

/// A user-visible consequence of settling, turned into an Event by the executor.
#[derive(Clone, Debug, PartialEq)]
pub enum Settled {
    Succeeded,
    Resumed {
        remainder: RecordRange,
    },
    Retrying {
        reason: BatchReason,
        message: String,
        delay_seconds: u64,
    },
    SplitAfterOom {
        halves: [RecordRange; 2],
    },
    /// The records run again whole with a larger memory limit (bytes `from` to `to`), after
    /// an OOM kill or after the guard stopped a worker that could not finish one record.
    MoreMemory {
        cause: BatchReason,
        remainder: RecordRange,
        from: u64,
        to: u64,
    },
    FailedForGood {
        reason: BatchReason,
        message: String,
    },
    Stopped {
        action: GuardAction,
        remainder: RecordRange,
        pieces: Vec<RecordRange>,
    },
    DrainedInProcess {
        seen: MemorySeen,
        remainder: RecordRange,
        pieces: Vec<RecordRange>,
    },
}

/// An attempt to settle: its records, its number, and the memory limit its worker ran with
/// (bytes; `None` when unknown, taken as the spec's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ran {
    pub range: RecordRange,
    pub attempt: u32,
    pub memory_limit: Option<u64>,
}

impl Ran {
    pub fn new(range: RecordRange, attempt: u32) -> Self {
        Self {
            range,
            attempt,
            memory_limit: None,
        }
    }
}

/// Settles one attempt into the ledger. The caller checked `ledger.awaits(range, attempt)`.
pub fn settle(
    ledger: &mut Ledger,
    ran: Ran,
    outcome: Outcome,
    policy: &SettlePolicy,
    now: Timestamp,
) -> Settled {
    let failures = ledger
        .pending_index(ran.range, ran.attempt)
        .map(|i| ledger.pending.remove(i).failures)
        .unwrap_or(0);
    settle_with(ledger, (ran, failures), outcome, policy, now)
}

/// One attempt being settled: what it ran with and how often its range failed before.
struct Settling<'a, 'p> {
    ran: Ran,
    failures: u32,
    policy: &'a SettlePolicy<'p>,
    now: Timestamp,
}

impl Settling<'_, '_> {
    /// Bytes of memory limit the worker ran with.
    fn ran_with(&self) -> u64 {
        self.ran.memory_limit.unwrap_or(self.policy.limit_bytes)
    }

    /// `range` queued again as the next attempt; it keeps the memory the attempt was grown to.
    fn requeue(
        &self,
        range: RecordRange,
        reason: BatchReason,
        failures: u32,
        delay: std::time::Duration,
    ) -> Requeued {
        Requeued {
            range,
            attempt: self.ran.attempt + 1,
            failures,
            not_before: (!delay.is_zero()).then(|| self.now + delay),
            reason,
            memory_limit: self
                .ran
                .memory_limit
                .filter(|m| *m > self.policy.limit_bytes),
        }
    }

    /// Runs `rest` again whole with more memory, when the ceiling leaves room.
    fn grow(&self, ledger: &mut Ledger, rest: RecordRange, cause: BatchReason) -> Option<Settled> {
        let ran_with = self.ran_with();
        let max = self.policy.max_bytes.filter(|max| ran_with < *max)?;
        let to = ran_with.saturating_mul(MEMORY_GROWTH).min(max);
        ledger.pending.push(Requeued {
            memory_limit: Some(to),
            ..self.requeue(rest, cause.clone(), self.failures, Default::default())
        });
        Some(Settled::MoreMemory {
            cause,
            remainder: rest,
            from: ran_with,
            to,
        })
    }
}

/// Settles an attempt already taken off the queue, with the failures its range had so far.
fn settle_with(
    ledger: &mut Ledger,
    (ran, failures): (Ran, u32),
    outcome: Outcome,
    policy: &SettlePolicy,
    now: Timestamp,
) -> Settled {
    let settling = Settling {
        ran,
        failures,
        policy,
        now,
    };
    match outcome {
        Outcome::Finished(result) => finished(ledger, &settling, result),
        Outcome::Stopped { action, partial } => stopped(ledger, &settling, action, partial),
        Outcome::Failed {
            reason,
            message,
            partial,
        } => failed(ledger, &settling, (reason, message), partial),
    }
}

/// The worker reported a result: counted, and what it did not reach continues.
fn finished(ledger: &mut Ledger, settling: &Settling, result: WorkerResult) -> Settled {
    let range = settling.ran.range;
    if let Err(refused) = ledger.add_result(result.done(range), &result) {
        // Refused as a whole; it counts as one more failure of this range.
        let reason = (BatchReason::BadOutput, refused.to_string());
        return failed(ledger, settling, reason, None);
    }
    ledger.succeeded += 1;
    let remainder = result.remainder(range);
    if remainder.is_empty() {
        return Settled::Succeeded;
    }
    ledger.drained += 1;
    for part in pieces(remainder, settling.policy.on_pressure) {
        let resumed = settling.requeue(
            part,
            BatchReason::Resumed,
            settling.failures,
            Default::default(),
        );
        ledger.pending.push(resumed);
    }
    Settled::Resumed { remainder }
}

/// The memory guard (the operator's or the worker's own) stopped the worker: its checkpoint
/// is counted and the rest continues smaller, without using up an attempt.
fn stopped(
    ledger: &mut Ledger,
    settling: &Settling,
    action: GuardAction,
    partial: Option<WorkerResult>,
) -> Settled {
    let range = settling.ran.range;
    let in_process = partial.as_ref().and_then(|p| p.memory_stop()).cloned();
    if let Some(seen) = &in_process {
        let peak = &mut ledger.guard.peak_percent;
        *peak = (*peak).max(u32::from(seen.percent()));
    }
    let mut rest = range;
    if let Some(result) = partial
        && ledger.add_result(result.done(range), &result).is_ok()
    {
        rest = result.remainder(range);
    }
    ledger.drained += 1;
    match action {
        GuardAction::Restart => ledger.guard.restarts += 1,
        _ => ledger.guard.drains += 1,
    }
    if rest.is_empty() {
        return Settled::Succeeded;
    }
    // Every guard action must shrink what is left, or a worker that never checkpoints
    // would be stopped forever: without progress the rest is halved.
    let pieces = match (rest.start > range.start, action) {
        (true, GuardAction::Drain) => pieces(rest, settling.policy.on_pressure),
        (true, _) => vec![rest],
        (false, _) if rest.len() > 1 => rest.halves().to_vec(),
        (false, _) => return one_record_too_large(ledger, settling, rest),
    };
    let reason = match action {
        GuardAction::Restart => BatchReason::Restarted,
        _ => BatchReason::Drained,
    };
    for piece in &pieces {
        let again = settling.requeue(
            *piece,
            reason.clone(),
            settling.failures,
            Default::default(),
        );
        ledger.pending.push(again);
    }
    match in_process {
        Some(seen) => Settled::DrainedInProcess {
            seen,
            remainder: rest,
            pieces,
        },
        None => Settled::Stopped {
            action,
            remainder: rest,
            pieces,
        },
    }
}

/// One record the guard stopped without progress cannot be split: it gets more memory when
/// the ceiling allows, else it fails for good.
fn one_record_too_large(ledger: &mut Ledger, settling: &Settling, rest: RecordRange) -> Settled {
    if let Some(more) = settling.grow(ledger, rest, BatchReason::MemoryPressure) {
        return more;
    }
    let policy = settling.policy;
    let ran_with = settling.ran_with();
    ledger.failed.insert(rest);
    ledger.failed_batches += 1;
    let message = format!(
        "{} alone needs more than {}% of its {} memory limit: {}",
        policy.name(rest.start),
        policy.threshold,
        bytes_quantity(ran_with),
        policy.raise_hint()
    );
    ledger.record_failure(FailureRecord {
        range: rest.to_string(),
        attempt: settling.ran.attempt,
        reason: BatchReason::MemoryPressure,
        message: message.clone(),
        memory_limit: Some(bytes_quantity(ran_with)),
    });
    Settled::FailedForGood {
        reason: BatchReason::MemoryPressure,
        message,
    }
}

/// The attempt failed: its checkpoint is counted; an OOM kill splits or grows the rest
/// without using up an attempt; any other failure is retried with backoff until the
/// attempts run out.
fn failed(
    ledger: &mut Ledger,
    settling: &Settling,
    (reason, message): (BatchReason, String),
    partial: Option<WorkerResult>,
) -> Settled {
    let Ran { range, attempt, .. } = settling.ran;
    let policy = settling.policy;
    let ran_with = settling.ran_with();
    let mut rest = range;
    if let Some(result) = partial
        && ledger.add_result(result.done(range), &result).is_ok()
    {
        rest = result.remainder(range);
    }
    let message = truncate(&message, MAX_FAILURE_MESSAGE);
    let oom = reason == BatchReason::OomKilled;
    // One record cannot be split: it can only get more memory, up to the ceiling.
    let past_ceiling = policy
        .max_bytes
        .filter(|max| oom && rest.len() == 1 && ran_with >= *max)
        .map(|max| {
            format!(
                "{} needs more memory than the {} ceiling (spec.resources.memory.max): OOM-killed at {}",
                policy.name(rest.start),
                bytes_quantity(max),
                bytes_quantity(ran_with)
            )
        });
    ledger.record_failure(FailureRecord {
        range: range.to_string(),
        attempt,
        reason: reason.clone(),
        message: past_ceiling.clone().unwrap_or_else(|| message.clone()),
        memory_limit: Some(bytes_quantity(ran_with)),
    });
    if rest.is_empty() {
        return Settled::Succeeded;
    }
    if oom {
        ledger.guard.oom_kills += 1;
        if let Some(message) = past_ceiling {
            ledger.failed.insert(rest);
            ledger.failed_batches += 1;
            return Settled::FailedForGood { reason, message };
        }
        if let Some(settled) = after_oom(ledger, settling, rest) {
            return settled;
        }
    }
    retry_or_give_up(ledger, settling, rest, (reason, message))
}

/// An OOM-killed rest runs again with more memory (when the run asks for it, or it is one
/// record) or in halves; `None` for one record that cannot grow.
fn after_oom(ledger: &mut Ledger, settling: &Settling, rest: RecordRange) -> Option<Settled> {
    if (settling.policy.on_oom == OnOom::Grow || rest.len() == 1)
        && let Some(more) = settling.grow(ledger, rest, BatchReason::OomKilled)
    {
        return Some(more);
    }
    if rest.len() <= 1 {
        return None;
    }
    let halves = rest.halves();
    for half in halves {
        let again = settling.requeue(
            half,
            BatchReason::OomKilled,
            settling.failures,
            Default::default(),
        );
        ledger.pending.push(again);
    }
    Some(Settled::SplitAfterOom { halves })
}

/// One more failure of the range: retried after its backoff, or failed for good once the
/// attempts run out.
fn retry_or_give_up(
    ledger: &mut Ledger,
    settling: &Settling,
    rest: RecordRange,
    (reason, message): (BatchReason, String),
) -> Settled {
    let policy = settling.policy;
    let attempt = settling.ran.attempt;
    let failures = settling.failures + 1;
    if failures >= policy.retry.max_attempts {
        ledger.failed.insert(rest);
        ledger.failed_batches += 1;
        let message =
            format!("{message} (attempt {attempt}, {failures} failures: no retries left)");
        return Settled::FailedForGood { reason, message };
    }
    let delay = retry_delay(
        &policy.retry.backoff,
        failures,
        (policy.seed, rest, attempt),
    );
    ledger
        .pending
        .push(settling.requeue(rest, reason.clone(), failures, delay));
    Settled::Retrying {
        reason,
        message,
        delay_seconds: delay.as_secs(),
    }
}

/// How a remainder is queued again.
fn pieces(remainder: RecordRange, on_pressure: OnPressure) -> Vec<RecordRange> {
    match on_pressure {
        OnPressure::Split if remainder.len() > 1 => remainder.halves().to_vec(),
        _ => vec![remainder],
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The parts of the spec that settling needs.
#[derive(Clone, Debug)]
pub struct SettlePolicy<'a> {
    pub retry: &'a RetryPolicy,
    pub on_pressure: OnPressure,
    pub on_oom: OnOom,
    /// Guard threshold, for the message of a record too large to process.
    pub threshold: u8,
    /// Bytes of the spec's memory limit, and of its ceiling for retries with more memory.
    pub limit_bytes: u64,
    pub max_bytes: Option<u64>,
    /// The run's items, to name a record in items mode.
    pub items: Option<&'a [String]>,
    /// Seeds the jitter (the run's uid).
    pub seed: &'a str,
}

impl SettlePolicy<'_> {
    /// A record as users know it: the item's name in items mode, the offset otherwise.
    fn name(&self, record: u64) -> String {
        match self.items.and_then(|items| items.get(record as usize)) {
            Some(item) => format!("item {record} ({item:?})"),
            None => format!("record {record}"),
        }
    }

    fn raise_hint(&self) -> &'static str {
        match self.max_bytes {
            Some(_) => "raise spec.resources.memory.max",
            None => {
                "raise spec.resources.memory.limit, or set spec.resources.memory.max to retry it with more memory"
            }
        }
    }
}

#[cfg(test)]
mod tests;
