//! One reconcile: read the run fresh, observe its Jobs and pods, plan, execute.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, ObjectReference, Pod};
use kube::api::{DeleteParams, ListParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

use super::events::failure_event;
use super::executor::{execute, release_finalizer};
use super::job::{JobError, build_job, check_items_fit};
use super::{Context, Error, observe};
use crate::api::kube_facts::job_memory_bytes;
use crate::api::labels::{CLEANUP_FINALIZER, RESULT_FINALIZER, RETRY_FAILED, RUN_UID};
use crate::api::worker_pod::worker_container;
use crate::api::{BatchRun, universe};
use crate::plan::{
    Demand, Launch, Observed, ObservedAttempt, Plan, Seat, fresh_batches, plan, plan_invalid,
    seat_of, share,
};
use crate::queues::{QueueEntry, budget_of, created, members};

#[tracing::instrument(skip_all, fields(
    run = %run.name_any(),
    namespace = run.namespace().unwrap_or_default(),
))]
pub async fn reconcile(run: Arc<BatchRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = run.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<BatchRun> = Api::namespaced(ctx.client.clone(), &namespace);
    let run_uid = run.uid().unwrap_or_default();
    let reference = run.object_ref(&());
    let result = finalizer(&api, CLEANUP_FINALIZER, run, |event| async {
        match event {
            Finalizer::Apply(run) => apply(&run, &api, &ctx).await,
            Finalizer::Cleanup(run) => cleanup(&run, &ctx).await,
        }
    })
    .await
    .map_err(Error::from);
    let failed = result.as_ref().err();
    ctx.metrics
        .runs
        .observe_reconcile(started.elapsed(), failed.map(Error::metric_label));
    match failed {
        None => ctx.setbacks.reconciled(&run_uid),
        Some(error) => publish_failure(error, &reference, &ctx).await,
    }
    result
}

/// Tells the run's users why it is stuck, as a Warning Event: one per failing step, since
/// the recorder folds repeats of a step into that Event's count.
async fn publish_failure(error: &Error, reference: &ObjectReference, ctx: &Context) {
    if let Err(error) = ctx.recorder.publish(&failure_event(error), reference).await {
        tracing::debug!(%error, "could not publish the reconcile error as an Event");
    }
}

#[tracing::instrument(skip_all)]
async fn apply(cached: &BatchRun, api: &Api<BatchRun>, ctx: &Context) -> Result<Action, Error> {
    if !ctx.caches_ready.load(Ordering::Relaxed) {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    // The controller's cache may not hold our last status write yet; planning from an old
    // ledger would relaunch finished batches, so the run is read fresh unless the cache
    // shows exactly the version this process last wrote.
    let uid = cached.uid().unwrap_or_default();
    let run = if ctx
        .last_writes
        .is_current(&uid, cached.resource_version().as_deref())
    {
        cached.clone()
    } else {
        api.get(&cached.name_any())
            .await
            .map_err(|source| Error::ReadRun {
                run: cached.name_any(),
                source,
            })?
    };
    let uid = run.uid().unwrap_or_default();
    let namespace = run.namespace().ok_or(Error::NoNamespace)?;
    let worker = worker_container(&run);
    let jobs = ctx.jobs.state();
    let pods = ctx.pods.state();
    let owned = observe::owned(
        &uid,
        jobs.iter().map(|j| j.as_ref()),
        pods.iter().map(|p| p.as_ref()),
    );
    if !owned.strangers.is_empty() {
        tracing::warn!(pods = ?owned.strangers, "pods with the run's labels but no Job of the run: ignored, their result finalizer released");
    }
    let mut attempts = observe::attempts(
        owned.jobs.iter().copied(),
        owned.pods.iter().copied(),
        &worker,
    );
    let pod_refused = pod_refusals(&mut attempts, &owned.jobs, &namespace, ctx).await?;
    ctx.expectations
        .apply(&uid, &mut attempts, jiff::Timestamp::now());
    let strangers = owned.strangers;
    let with_strangers = |mut plan: Plan| {
        plan.release.extend(strangers.iter().cloned());
        plan
    };
    let status = run.status.clone().unwrap_or_default();
    let generation = run.metadata.generation.unwrap_or_default();
    let refusal = ctx.setbacks.refusal(&uid, generation);
    let memory = ctx
        .guard
        .as_ref()
        .map(|view| view.get(&uid).unwrap_or_default());
    let mut observed = Observed {
        run_name: &run.name_any(),
        run_uid: &uid,
        generation,
        spec: &run.spec,
        status: &status,
        attempts: &attempts,
        now: jiff::Timestamp::now(),
        memory: memory.as_ref(),
        seat: None,
        retry_request: run.annotations().get(RETRY_FAILED).map(String::as_str),
        refused: refusal.as_ref(),
    };
    // The apiserver refuses this spec's Jobs and the run has never had one: no batch can run.
    let never_ran = attempts.is_empty() && status.completed.is_empty() && status.failed.is_empty();
    let invalid = match (check_spec(&run), &refusal) {
        (Err(invalid), _) => Err(invalid),
        (Ok(_), Some(refusal)) if refusal.is_invalid_spec() && never_ran => {
            Err(InvalidSpec::Refused(refusal.message.clone()))
        }
        (ok, _) => ok,
    };
    let bytes_each = match invalid {
        Ok(bytes_each) => bytes_each,
        Err(invalid) => {
            let plan = with_strangers(plan_invalid(&observed, invalid.to_string()));
            return execute(&run, plan, ctx, None).await;
        }
    };
    let Some(queue) = &run.spec.queue else {
        return execute(&run, with_strangers(plan(&observed)), ctx, None).await;
    };
    // One run of a queue at a time decides and creates its Jobs: the next one must see them.
    let entry = ctx.queues.entry(&namespace, queue);
    let _turn = entry.turn.lock().await;
    // A Job whose pod is refused holds none of the queue's memory.
    pod_refused.iter().for_each(|job| entry.pod_refused(job));
    let wanted = plan(&observed).launch;
    // A batch retried with more memory asks for room at its own size: every batch of this
    // round is charged that much, so the queue's budget holds whichever starts.
    let bytes_each = wanted
        .iter()
        .filter_map(|launch| launch.memory_limit)
        .fold(bytes_each, u64::max);
    let wanted = wanted.len();
    observed.seat = Some(seat(&run, queue, wanted, bytes_each, &entry, ctx));
    let plan = plan(&observed);
    tracing::debug!(
        launches = plan.launch.len(),
        wanted,
        releases = plan.release.len(),
        status_write = plan.status.is_some(),
        "planned"
    );
    execute(&run, with_strangers(plan), ctx, Some(&entry)).await
}

/// The run's share of its queue now, from what the queue's workers hold and what its other
/// runs wait for; records what this run still waits for, for their next round.
fn seat(
    run: &BatchRun,
    queue_name: &str,
    wanted: usize,
    bytes_each: u64,
    entry: &QueueEntry,
    ctx: &Context,
) -> Seat {
    let namespace = run.namespace().unwrap_or_default();
    let refuse = |reason: &str, message: String| Seat {
        queue: queue_name.to_string(),
        granted: 0,
        waiting: Some((reason.to_string(), message)),
    };
    let Some(queue) = ctx
        .queue_store
        .get(&ObjectRef::new(queue_name).within(&namespace))
    else {
        return refuse(
            "QueueNotFound",
            format!(
                "BatchQueue {queue_name} does not exist in namespace {namespace}: no batch starts until it does"
            ),
        );
    };
    let budget = match budget_of(&queue) {
        Ok(budget) => budget,
        Err(invalid) => {
            return refuse(
                "InvalidQueue",
                format!("BatchQueue {queue_name}: {invalid}"),
            );
        }
    };
    let uid = run.uid().unwrap_or_default();
    let demand = Demand {
        last_served: entry.last_served(&uid),
        run: uid,
        name: run.name_any(),
        created: created(run),
        batches: wanted,
        bytes_each,
    };
    let holdings = entry.holdings(&namespace, queue_name, &ctx.jobs, &ctx.pods);
    let members = members(&ctx.runs, &namespace, queue_name);
    let mut demands: Vec<Demand> = entry
        .demands(members.iter().map(|r| r.as_ref()))
        .into_iter()
        .filter(|d| d.run != demand.run)
        .collect();
    demands.push(demand.clone());
    let shares = share(&budget, &holdings, &demands);
    let seat = seat_of(queue_name, &budget, &shares, &demand);
    entry.record(
        Demand {
            batches: wanted - seat.granted,
            ..demand
        },
        seat.granted > 0,
    );
    seat
}

/// A Job without a pod this long is asked why (its `FailedCreate` Events).
const PODLESS_GRACE: Duration = Duration::from_secs(5);

/// Looks up why the Job controller created no pod for the run's podless Jobs (one Job per
/// reconcile, so a run with many refused Jobs costs one list), and writes it into `attempts`.
/// Returns the Jobs whose pod is refused.
#[tracing::instrument(skip_all)]
async fn pod_refusals(
    attempts: &mut [ObservedAttempt],
    jobs: &[&Job],
    namespace: &str,
    ctx: &Context,
) -> Result<Vec<String>, Error> {
    let now = jiff::Timestamp::now();
    let podless = attempts.iter().find_map(|a| {
        let job = a.job.as_ref()?;
        let old = job
            .created
            .is_some_and(|c| now.duration_since(c).unsigned_abs() > PODLESS_GRACE);
        (a.is_alive() && a.pods.is_empty() && old).then(|| job.name.clone())
    });
    let Some(job_name) = podless else {
        return Ok(vec![]);
    };
    let Some(job_uid) = jobs
        .iter()
        .find(|j| j.name_any() == job_name)
        .and_then(|j| j.uid())
    else {
        return Ok(vec![]);
    };
    let events: Api<Event> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = format!("involvedObject.uid={job_uid},reason=FailedCreate");
    let found = events
        .list(&ListParams::default().fields(&selector))
        .await
        .map_err(|source| Error::ListJobEvents {
            job: job_name.clone(),
            source,
        })?;
    let Some(why) = found
        .items
        .iter()
        .max_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0))
        .and_then(|e| e.message.clone())
    else {
        return Ok(vec![]);
    };
    // The same refusal holds for every podless Job of the run: one template.
    let mut refused = vec![];
    for attempt in attempts
        .iter_mut()
        .filter(|a| a.is_alive() && a.pods.is_empty())
    {
        if let Some(job) = attempt.job.as_mut() {
            job.pod_refused = Some(why.clone());
            refused.push(job.name.clone());
        }
    }
    Ok(refused)
}

/// Why no batch of a run can run; the message becomes its `InvalidSpec` condition.
#[derive(Debug, thiserror::Error)]
enum InvalidSpec {
    #[error("spec.input holds no records")]
    NoRecords,
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("the apiserver refuses the run's batch Jobs: {0}")]
    Refused(String),
}

/// What the schema cannot say about a spec: can a Job be built from it at all. Returns the
/// memory one worker pod may hold, which is what a queue admits.
fn check_spec(run: &BatchRun) -> Result<u64, InvalidSpec> {
    let first = fresh_batches(
        universe(&run.spec),
        run.spec.input.batch_size,
        &Default::default(),
        1,
    );
    let Some(range) = first.first().copied() else {
        return Err(InvalidSpec::NoRecords);
    };
    if let Some(items) = &run.spec.input.items {
        check_items_fit(items, run.spec.input.batch_size)?;
    }
    let job = build_job(
        run,
        &Launch {
            range,
            attempt: 1,
            memory_limit: None,
        },
    )?;
    Ok(job_memory_bytes(&job))
}

/// A deleted run releases its worker pods (they hold the result finalizer) and its Jobs.
#[tracing::instrument(skip_all)]
async fn cleanup(run: &BatchRun, ctx: &Context) -> Result<Action, Error> {
    let namespace = run.namespace().ok_or(Error::NoNamespace)?;
    let uid = run.uid().unwrap_or_default();
    ctx.last_writes.forget(&uid);
    ctx.expectations.forget(&uid);
    let selector = format!("{RUN_UID}={uid}");
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    jobs.delete_collection(&params, &ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::DeleteJobs {
            run: run.name_any(),
            source,
        })?;
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::ListPods {
            run: run.name_any(),
            source,
        })?;
    for pod in listed {
        if pod.finalizers().iter().any(|f| f == RESULT_FINALIZER) {
            release_finalizer(&pods, &pod).await?;
        }
    }
    ctx.metrics.runs.forget_run(&namespace, &run.name_any());
    ctx.queues.forget_run(&namespace, &uid);
    ctx.setbacks.forget(&uid);
    tracing::info!(run = %run.name_any(), "run deleted: its Jobs are removed and its pods released");
    Ok(Action::await_change())
}
