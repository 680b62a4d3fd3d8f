//! The planner: from what one reconcile observed, the actions that move the run forward.
//!
//! Order matters and the executor keeps it: the status (with every settled result) is written
//! first; only once that write succeeded are result finalizers released and new Jobs created.
//! A crash between any two steps leaves a state the next reconcile settles exactly once.

use std::time::Duration;

use super::{
    Ledger, Observed, ObservedAttempt, Outcome, RangeSet, RecordRange, RunState, SettlePolicy, Settled,
    fresh_batches, outcome_of, settle,
};
use crate::api::{BatchRunStatus, Phase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Queue entries above which no fresh batch is cut, so that retries drain first and the
/// status stays small however many batches fail at once.
pub const MAX_PENDING: usize = 500;

/// One Job to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub range: RecordRange,
    pub attempt: u32,
}

/// Something users should hear about (the executor turns these into Events).
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    Settled { range: RecordRange, attempt: u32, settled: Settled },
    Finished(RunState),
}

/// The actions of one reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The status to write, when it differs from the observed one.
    pub status: Option<BatchRunStatus>,
    /// Pods whose result is in the (new) status: their result finalizer can go.
    pub release: Vec<String>,
    pub launch: Vec<Launch>,
    pub notices: Vec<Notice>,
    /// Look again after this long even if nothing changes (backoff, retention).
    pub requeue_after: Option<Duration>,
}

/// The records of a run: `[start, end)` in range mode, item indexes in items mode.
pub fn universe(spec: &crate::api::BatchRunSpec) -> RecordRange {
    match (&spec.input.range, &spec.input.items) {
        (Some(r), _) => RecordRange::new(r.start.max(0) as u64, r.end.max(r.start).max(0) as u64),
        (None, Some(items)) => RecordRange::new(0, items.len() as u64),
        (None, None) => RecordRange::new(0, 0),
    }
}

pub fn plan(observed: &Observed) -> Plan {
    let spec = observed.spec;
    let now = observed.now;
    let mut plan = Plan { status: None, release: vec![], launch: vec![], notices: vec![], requeue_after: None };
    let mut ledger = match Ledger::from_status(observed.status) {
        Ok(ledger) => ledger,
        Err(err) => {
            let state = RunState::Failed { reason: "InvalidStatus".into(), message: format!("status cannot be read: {err}") };
            plan.status = changed(observed.status, finish_status(observed, &Ledger::default(), &state, 0));
            return plan;
        }
    };
    let universe = universe(spec);
    let policy = SettlePolicy {
        retry: &spec.retry,
        on_pressure: spec.memory_guard.on_pressure,
        seed: observed.run_uid,
    };

    // Settle every attempt whose worker ended and whose result is not in the ledger yet.
    let covered = ledger.covered();
    let mut attempts: Vec<&ObservedAttempt> = observed.attempts.iter().collect();
    attempts.sort_by_key(|a| (a.range, a.attempt));
    for attempt in &attempts {
        let Some(outcome) = outcome_of(attempt) else { continue };
        if ledger.awaits(&covered, attempt.range, attempt.attempt) {
            let settled = settle(&mut ledger, attempt.range, attempt.attempt, outcome.clone(), &policy, now);
            plan.notices.push(Notice::Settled { range: attempt.range, attempt: attempt.attempt, settled });
        }
        let keep_until = match outcome {
            Outcome::Failed { .. } => Some(spec.retention.failed_seconds),
            Outcome::Finished(_) => None,
        };
        for pod in attempt.pods.iter().filter(|p| p.holds_result && p.exit.is_some()) {
            let finished = pod.exit.as_ref().and_then(|e| e.finished_at).unwrap_or(now);
            let release_at = finished + Duration::from_secs(keep_until.unwrap_or(0).max(0) as u64);
            if release_at <= now {
                plan.release.push(pod.name.clone());
            } else {
                plan.requeue_after = earliest(plan.requeue_after, release_at.duration_since(now).unsigned_abs());
            }
        }
    }

    // Launch within the parallelism cap: queued ranges first, then fresh grid cells.
    let alive = attempts.iter().filter(|a| a.is_alive()).count();
    let failing = ledger.failed_batches > u64::from(spec.retry.max_failed_batches);
    if !spec.suspend && !failing {
        let mut room = (spec.parallelism as usize).saturating_sub(alive);
        let mut ready: Vec<_> = ledger
            .pending
            .iter()
            .filter(|p| !attempts.iter().any(|a| a.range == p.range && a.attempt == p.attempt))
            .collect();
        ready.sort_by_key(|p| (p.not_before, p.range));
        for entry in ready {
            match entry.not_before.filter(|t| *t > now) {
                Some(later) => plan.requeue_after = earliest(plan.requeue_after, later.duration_since(now).unsigned_abs()),
                None if room > 0 => {
                    plan.launch.push(Launch { range: entry.range, attempt: entry.attempt });
                    room -= 1;
                }
                None => {}
            }
        }
        if ledger.pending.len() < MAX_PENDING {
            let mut occupied: RangeSet = attempts.iter().map(|a| a.range).collect();
            occupied.union(&ledger.covered());
            let fresh = fresh_batches(universe, spec.input.batch_size, &occupied, room);
            plan.launch.extend(fresh.into_iter().map(|range| Launch { range, attempt: 1 }));
        }
    }

    let running = alive + plan.launch.len();
    let state = run_state(observed, &ledger, universe, running, failing);
    if state.is_finished() && !matches!(observed.status.phase, Some(Phase::Succeeded | Phase::Failed)) {
        plan.notices.push(Notice::Finished(state.clone()));
    }
    plan.status = changed(observed.status, finish_status(observed, &ledger, &state, running));
    plan
}

fn run_state(observed: &Observed, ledger: &Ledger, universe: RecordRange, running: usize, failing: bool) -> RunState {
    let spec = observed.spec;
    let settled_all = ledger.settled().contains_all(&universe) && ledger.pending.is_empty();
    let unsettled = observed.attempts.iter().any(|a| a.pods.iter().any(|p| p.exit.is_none()));
    if running == 0 && !unsettled && (settled_all || failing) {
        if ledger.failed.is_empty() {
            return RunState::Succeeded {
                message: format!("all {} records done in {} batches", universe.len(), ledger.succeeded),
            };
        }
        let last = ledger.failures.last().map(|f| format!("; last failure: records {} attempt {}: {}: {}", f.range, f.attempt, f.reason, f.message)).unwrap_or_default();
        let stop = if failing { format!(" (more than {} batches failed, the run stopped)", spec.retry.max_failed_batches) } else { String::new() };
        return RunState::Failed {
            reason: "BatchesFailed".into(),
            message: format!("records {} failed after {} attempts{stop}{last}", ledger.failed, spec.retry.max_attempts),
        };
    }
    let done = ledger.completed.len();
    let message = format!(
        "{done}/{} records done, {running} batches running, {} queued again",
        universe.len(),
        ledger.pending.len()
    );
    if spec.suspend {
        RunState::Suspended { message: format!("suspended: {message}") }
    } else if running == 0 && observed.status.start_time.is_none() {
        RunState::Pending { message }
    } else {
        RunState::Running { message }
    }
}

fn finish_status(observed: &Observed, ledger: &Ledger, state: &RunState, running: usize) -> BatchRunStatus {
    let old = observed.status;
    let mut status = old.clone();
    ledger.write_to(&mut status);
    let universe = universe(observed.spec);
    status.observed_generation = Some(observed.generation);
    status.phase = Some(state.phase());
    status.conditions = state.conditions(observed.generation, &old.conditions, observed.now);
    status.progress = Some(format!("{}/{}", ledger.completed.len(), universe.len()));
    status.batches.running = running as u64;
    if status.start_time.is_none() && running > 0 {
        status.start_time = Some(Time(observed.now));
    }
    if state.is_finished() && status.completion_time.is_none() {
        status.completion_time = Some(Time(observed.now));
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
    let state = RunState::Failed { reason: "InvalidSpec".into(), message };
    let ledger = Ledger::from_status(observed.status).unwrap_or_default();
    Plan {
        status: changed(observed.status, finish_status(observed, &ledger, &state, 0)),
        release: vec![],
        launch: vec![],
        notices: vec![],
        requeue_after: None,
    }
}
