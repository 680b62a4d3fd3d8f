//! The planner: from what one reconcile observed, the actions that move the run forward.
//!
//! Order matters and the executor keeps it: the status (with every settled result) is written
//! first; only once that write succeeded are result finalizers released and new Jobs created.
//! A crash between any two steps leaves a state the next reconcile settles exactly once.

use std::time::Duration;

use super::RunMemory;
use super::{
    Ledger, MemoryModel, Observed, ObservedAttempt, Outcome, Ran, Requeued, RunState, SettlePolicy,
    Settled, clean_up, fresh_batches, memory_condition, outcome_of, queued_condition, rerun_failed,
    settle, sized_batches, sizing, stall,
};
use crate::api::{
    BatchReason, BatchRunSpec, BatchRunStatus, ConditionStatus, MemorySample, Phase, RangeSet,
    RecordRange, memory_bytes, universe,
};
use crate::worker::WorkerResult;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Queue entries above which no fresh batch is cut, so that retries drain first and the
/// status stays small however many batches fail at once.
pub const MAX_PENDING: usize = 500;

/// How often a run that waits for its queue asks again.
pub const QUEUE_POLL: Duration = Duration::from_secs(1);

/// One Job to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub range: RecordRange,
    pub attempt: u32,
    /// Bytes of memory limit when grown past the spec's after an OOM kill.
    pub memory_limit: Option<u64>,
}

/// Something users should hear about (the executor turns these into Events).
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    Settled {
        range: RecordRange,
        attempt: u32,
        settled: Settled,
    },
    Finished(RunState),
    /// A user asked for the failed ranges again.
    Retried {
        batches: usize,
    },
    /// The run became stalled, or stalled for another reason.
    Stalled {
        reason: String,
        message: String,
    },
}

/// The actions of one reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// The status to write, when it differs from the observed one.
    pub status: Option<BatchRunStatus>,
    /// Pods whose result is in the (new) status: their result finalizer can go.
    pub release: Vec<String>,
    /// Jobs of settled attempts whose retention has passed.
    pub remove_jobs: Vec<String>,
    /// Pods whose worker ended and is counted but that still run (sidecars).
    pub stop: Vec<String>,
    pub launch: Vec<Launch>,
    pub notices: Vec<Notice>,
    /// Look again after this long even if nothing changes (backoff, retention).
    pub requeue_after: Option<Duration>,
}

pub fn plan(observed: &Observed) -> Plan {
    let mut plan = Plan::default();
    let mut ledger = match Ledger::from_status(observed.status) {
        Ok(ledger) => ledger,
        Err(err) => return unreadable_status(observed, &err.to_string()),
    };
    if let Some(batches) = rerun_if_asked(observed, &mut ledger) {
        plan.notices.push(Notice::Retried { batches });
    }
    let mut attempts: Vec<&ObservedAttempt> = observed.attempts.iter().collect();
    attempts.sort_by_key(|a| (a.range, a.attempt));
    let ended: Vec<(&ObservedAttempt, Outcome)> = attempts
        .iter()
        .filter_map(|a| Some((*a, outcome_of(a)?)))
        .collect();
    settle_ended(observed, &mut ledger, &ended, &mut plan);
    release_ended(observed, &ended, &mut plan);
    let alive = attempts.iter().filter(|a| a.is_alive()).count();
    let failing = ledger.failed_batches > u64::from(observed.spec.retry.max_failed_batches);
    launch(
        observed,
        &mut ledger,
        &attempts,
        (alive, failing),
        &mut plan,
    );
    let running = alive + plan.launch.len();
    finish(observed, &ledger, (running, failing), &mut plan);
    plan
}

/// A status the planner cannot read fails the run, saying why.
fn unreadable_status(observed: &Observed, err: &str) -> Plan {
    let state = RunState::Failed {
        reason: "InvalidStatus".into(),
        message: format!("status cannot be read: {err}"),
    };
    Plan {
        status: changed(
            observed.status,
            finish_status(observed, &Ledger::default(), &state, 0),
        ),
        ..Plan::default()
    }
}

/// Queues the failed ranges again when a user asked and this request was not acted on yet;
/// returns how many batches that made.
fn rerun_if_asked(observed: &Observed, ledger: &mut Ledger) -> Option<usize> {
    let request = observed.retry_request?;
    if ledger.retried_failed.as_deref() == Some(request) {
        return None;
    }
    let batches = rerun_failed(ledger, observed.attempts, observed.spec.input.batch_size);
    ledger.retried_failed = Some(request.to_string());
    Some(batches)
}

/// The parts of the spec that settling reads.
fn settle_policy<'a>(observed: &Observed<'a>) -> SettlePolicy<'a> {
    let spec = observed.spec;
    SettlePolicy {
        retry: &spec.retry,
        on_pressure: spec.memory_guard.on_pressure,
        on_oom: spec.memory_guard.on_oom,
        threshold: spec.memory_guard.threshold,
        limit_bytes: limit_bytes(spec),
        max_bytes: spec
            .resources
            .memory
            .max
            .as_deref()
            .and_then(|m| memory_bytes(m).ok()),
        items: spec.input.items.as_deref(),
        seed: observed.run_uid,
    }
}

fn limit_bytes(spec: &BatchRunSpec) -> u64 {
    memory_bytes(&spec.resources.memory.limit).unwrap_or(0)
}

/// Settles every ended attempt whose result is not in the ledger yet, learning the worker's
/// memory from finished ones.
fn settle_ended(
    observed: &Observed,
    ledger: &mut Ledger,
    ended: &[(&ObservedAttempt, Outcome)],
    plan: &mut Plan,
) {
    let spec = observed.spec;
    let policy = settle_policy(observed);
    let limit_bytes = policy.limit_bytes;
    let covered = ledger.covered();
    for (attempt, outcome) in ended {
        if !ledger.awaits(&covered, attempt.range, attempt.attempt) {
            continue;
        }
        if let Outcome::Finished(result) = outcome {
            let near = sizing::near_threshold_bytes(spec, limit_bytes);
            learn_memory(
                ledger,
                observed.memory,
                attempt,
                result,
                (limit_bytes, near),
            );
        }
        let ran = Ran {
            range: attempt.range,
            attempt: attempt.attempt,
            memory_limit: attempt.memory_limit(),
        };
        // Resizes are counted once, with the attempt's result.
        ledger.guard.resizes += attempt
            .pods
            .iter()
            .map(|p| u64::from(p.resizes))
            .sum::<u64>();
        let settled = settle(ledger, ran, outcome.clone(), &policy, observed.now);
        plan.notices.push(Notice::Settled {
            range: attempt.range,
            attempt: attempt.attempt,
            settled,
        });
    }
}

/// Result finalizers to release, Jobs past their retention, and pods still running beside
/// an ended worker.
fn release_ended(observed: &Observed, ended: &[(&ObservedAttempt, Outcome)], plan: &mut Plan) {
    for (attempt, outcome) in ended {
        let failed = matches!(outcome, Outcome::Failed { .. });
        let cleanup = clean_up(attempt, failed, &observed.spec.retention, observed.now);
        plan.release.extend(cleanup.release);
        plan.remove_jobs.extend(cleanup.remove_job);
        plan.stop.extend(cleanup.stop);
        if let Some(after) = cleanup.recheck {
            plan.requeue_after = earliest(plan.requeue_after, after);
        }
    }
}

/// Launches within the parallelism cap: queued ranges first, then fresh grid cells; after a
/// refused Job creation, not before the refusal's backoff has passed.
fn launch(
    observed: &Observed,
    ledger: &mut Ledger,
    attempts: &[&ObservedAttempt],
    (alive, failing): (usize, bool),
    plan: &mut Plan,
) {
    let (spec, now) = (observed.spec, observed.now);
    let backing_off = observed.refused.map(|r| r.retry_at).filter(|t| *t > now);
    if let Some(retry_at) = backing_off {
        plan.requeue_after = earliest(
            plan.requeue_after,
            retry_at.duration_since(now).unsigned_abs(),
        );
    }
    if !spec.suspend && !failing && backing_off.is_none() {
        let mut room = (spec.parallelism as usize).saturating_sub(alive);
        if let Some(seat) = &observed.seat {
            room = room.min(seat.granted);
        }
        room = launch_queued(observed, ledger, attempts, room, plan);
        if ledger.pending.len() < MAX_PENDING {
            launch_fresh(observed, ledger, attempts, room, plan);
        }
    }
    if observed.seat.as_ref().is_some_and(|s| s.waiting.is_some()) {
        // Room in a queue frees up without an event on this run: look again soon.
        plan.requeue_after = earliest(plan.requeue_after, QUEUE_POLL);
    }
}

/// Launches the queued ranges whose backoff has passed, oldest due first; returns the room
/// left.
fn launch_queued(
    observed: &Observed,
    ledger: &Ledger,
    attempts: &[&ObservedAttempt],
    mut room: usize,
    plan: &mut Plan,
) -> usize {
    let now = observed.now;
    let mut ready: Vec<_> = ledger
        .pending
        .iter()
        .filter(|p| {
            !attempts
                .iter()
                .any(|a| a.range == p.range && a.attempt == p.attempt)
        })
        .collect();
    ready.sort_by_key(|p| (p.not_before, p.range));
    for entry in ready {
        match entry.not_before.filter(|t| *t > now) {
            Some(later) => {
                plan.requeue_after =
                    earliest(plan.requeue_after, later.duration_since(now).unsigned_abs())
            }
            None if room > 0 => {
                plan.launch.push(Launch {
                    range: entry.range,
                    attempt: entry.attempt,
                    memory_limit: entry.memory_limit,
                });
                room -= 1;
            }
            None => {}
        }
    }
    room
}

/// Cuts fresh batches from the records no attempt holds yet, at the learned size.
fn launch_fresh(
    observed: &Observed,
    ledger: &mut Ledger,
    attempts: &[&ObservedAttempt],
    room: usize,
    plan: &mut Plan,
) {
    let spec = observed.spec;
    let universe = universe(spec);
    let mut occupied: RangeSet = attempts.iter().map(|a| a.range).collect();
    occupied.union(&ledger.covered());
    let size = sizing::batch_size(spec, learned(&ledger.guard), limit_bytes(spec));
    ledger.guard.batch_size = size;
    let fresh = if size < spec.input.batch_size {
        sized_batches(universe, size, &occupied, room)
    } else {
        fresh_batches(universe, size, &occupied, room)
    };
    if size < spec.input.batch_size {
        // Off the fixed grid, a cut is only safe to repeat if it is remembered: it is
        // written to the status before its Job is created.
        ledger.pending.extend(fresh.iter().map(|range| Requeued {
            range: *range,
            attempt: 1,
            failures: 0,
            not_before: None,
            reason: BatchReason::Sized,
            memory_limit: None,
        }));
    }
    plan.launch.extend(fresh.into_iter().map(|range| Launch {
        range,
        attempt: 1,
        memory_limit: None,
    }));
}

/// Where the run stands now, stalled or not, with the notices and the status that says so.
fn finish(
    observed: &Observed,
    ledger: &Ledger,
    (running, failing): (usize, bool),
    plan: &mut Plan,
) {
    let universe = universe(observed.spec);
    let mut state = run_state(observed, ledger, universe, running, failing);
    let (stall, recheck) = stall(observed);
    if let Some(after) = recheck {
        plan.requeue_after = earliest(plan.requeue_after, after);
    }
    if let (Some(stall), false) = (stall, state.is_finished() || observed.spec.suspend) {
        let progress = match &state {
            RunState::Pending { message } | RunState::Running { message } => message.clone(),
            _ => String::new(),
        };
        let was = observed
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled");
        if !was.is_some_and(|c| ConditionStatus::True.of(c) && c.reason == stall.reason) {
            plan.notices.push(Notice::Stalled {
                reason: stall.reason.clone(),
                message: stall.message.clone(),
            });
        }
        state = RunState::Stalled {
            reason: stall.reason,
            message: format!("{}; {progress}", stall.message),
            started: observed.status.start_time.is_some() || running > 0,
        };
    }
    if state.is_finished()
        && !matches!(
            observed.status.phase,
            Some(Phase::Succeeded | Phase::Failed)
        )
    {
        plan.notices.push(Notice::Finished(state.clone()));
    }
    plan.status = changed(
        observed.status,
        finish_status(observed, ledger, &state, running),
    );
}

fn run_state(
    observed: &Observed,
    ledger: &Ledger,
    universe: RecordRange,
    running: usize,
    failing: bool,
) -> RunState {
    let spec = observed.spec;
    let settled_all = ledger.settled().contains_all(&universe) && ledger.pending.is_empty();
    let unsettled = observed
        .attempts
        .iter()
        .any(|a| a.pods.iter().any(|p| p.exit.is_none()));
    if running == 0 && !unsettled && (settled_all || failing) {
        if ledger.failed.is_empty() {
            return RunState::Succeeded {
                message: format!(
                    "all {} records done in {} batches",
                    universe.len(),
                    ledger.succeeded
                ),
            };
        }
        return batches_failed(spec, ledger, failing);
    }
    let done = ledger.completed.len();
    let message = format!(
        "{done}/{} records done, {running} batches running, {} queued again",
        universe.len(),
        ledger.pending.len()
    );
    if spec.suspend {
        RunState::Suspended {
            message: format!("suspended: {message}"),
        }
    } else if running == 0 && observed.status.start_time.is_none() {
        RunState::Pending { message }
    } else {
        RunState::Running { message }
    }
}

/// A run that ended with failed records: which, why the last one failed, and whether it
/// stopped early.
fn batches_failed(spec: &BatchRunSpec, ledger: &Ledger, failing: bool) -> RunState {
    let last = ledger
        .failures
        .last()
        .map(|f| {
            format!(
                "; last failure: records {} attempt {}: {}: {}",
                f.range, f.attempt, f.reason, f.message
            )
        })
        .unwrap_or_default();
    let stop = if failing {
        format!(
            " (more than {} batches failed, the run stopped)",
            spec.retry.max_failed_batches
        )
    } else {
        String::new()
    };
    RunState::Failed {
        reason: "BatchesFailed".into(),
        message: format!(
            "records {} failed after {} attempts{stop}{last}",
            ledger.failed, spec.retry.max_attempts
        ),
    }
}

fn finish_status(
    observed: &Observed,
    ledger: &Ledger,
    state: &RunState,
    running: usize,
) -> BatchRunStatus {
    let old = observed.status;
    let mut status = old.clone();
    ledger.write_to(&mut status);
    let universe = universe(observed.spec);
    status.observed_generation = Some(observed.generation);
    status.phase = Some(state.phase());
    status.conditions = state.conditions(observed.generation, &old.conditions, observed.now);
    status.progress = Some(format!("{}/{}", ledger.completed.len(), universe.len()));
    status.batches.running = running as u64;
    let in_flight = |p: &&super::Requeued| {
        observed
            .attempts
            .iter()
            .any(|a| a.range == p.range && a.attempt == p.attempt)
    };
    status.batches.retrying = ledger
        .pending
        .iter()
        .filter(|p| !in_flight(p) && p.reason != BatchReason::Sized)
        .count() as u64;
    if let Some(memory) = observed.memory {
        status.guard.peak_percent = status.guard.peak_percent.max(memory.peak_percent());
    }
    status
        .conditions
        .push(memory_condition(observed, state, &status, &old.conditions));
    if let Some(seat) = &observed.seat {
        status
            .conditions
            .push(queued_condition(observed, seat, state, &old.conditions));
    }
    if status.start_time.is_none() && running > 0 {
        status.start_time = Some(Time(observed.now));
    }
    if state.is_finished() && status.completion_time.is_none() {
        status.completion_time = Some(Time(observed.now));
    }
    if !state.is_finished() {
        // A retried run runs again.
        status.completion_time = None;
    }
    status
}

fn changed(old: &BatchRunStatus, new: BatchRunStatus) -> Option<BatchRunStatus> {
    (new != *old).then_some(new)
}

fn earliest(current: Option<Duration>, candidate: Duration) -> Option<Duration> {
    Some(current.map_or(candidate, |c| c.min(candidate)))
}

/// The plan for a run whose spec cannot work (what the schema could not reject): no action,
/// a status that says exactly what is wrong.
pub fn plan_invalid(observed: &Observed, message: String) -> Plan {
    let state = RunState::Failed {
        reason: "InvalidSpec".into(),
        message,
    };
    let ledger = Ledger::from_status(observed.status).unwrap_or_default();
    // One Event when the run turns invalid, not one per reconcile.
    let notices = match observed.status.phase {
        Some(Phase::Failed) => vec![],
        _ => vec![Notice::Finished(state.clone())],
    };
    Plan {
        status: changed(observed.status, finish_status(observed, &ledger, &state, 0)),
        notices,
        ..Plan::default()
    }
}

/// Learns the worker's memory from a finished batch whose peak the guard saw: the sample
/// joins the recent ones and baseline and per-record cost are fitted again.
fn learn_memory(
    ledger: &mut Ledger,
    memory: Option<&RunMemory>,
    attempt: &ObservedAttempt,
    result: &WorkerResult,
    (limit_bytes, near_bytes): (u64, u64),
) {
    let records = result.done(attempt.range).len();
    let Some(seen) = memory.and_then(|m| attempt.pods.iter().find_map(|p| m.pods.get(&p.name)))
    else {
        return;
    };
    // Bytes where the guard kept them (a limit grown in place changes what a fraction
    // means); else the fraction of the pod's own limit, which a mid-run change of the spec
    // leaves as is.
    let limit_bytes = if seen.limit_bytes > 0 {
        seen.limit_bytes
    } else {
        limit_bytes
    };
    let peak_bytes = match seen.peak_bytes {
        0 => (seen.peak_fraction * limit_bytes as f64) as u64,
        bytes => bytes,
    };
    let sample = MemorySample {
        records,
        peak_bytes,
    };
    let guard = &mut ledger.guard;
    sizing::remember(&mut guard.memory_samples, sample);
    let model = sizing::fit(&guard.memory_samples, near_bytes);
    guard.baseline_bytes = model.map_or(0, |m| m.baseline_bytes);
    guard.bytes_per_record = model.map_or(0, |m| m.bytes_per_record);
}

/// The model the status holds, if any.
fn learned(guard: &crate::api::GuardStatus) -> Option<MemoryModel> {
    (guard.bytes_per_record > 0).then_some(MemoryModel {
        baseline_bytes: guard.baseline_bytes,
        bytes_per_record: guard.bytes_per_record,
    })
}
