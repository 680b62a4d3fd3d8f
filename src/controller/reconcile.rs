//! One reconcile: read the run fresh, observe its Jobs and pods, plan, execute.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tracing::{Instrument, info_span};

use super::executor::{execute, release_finalizer};
use super::job::{build_job, worker_container};
use super::labels::{CLEANUP_FINALIZER, RESULT_FINALIZER, RETRY_FAILED, RUN_UID};
use super::queue_usage::job_memory_bytes;
use super::queues::{QueueEntry, budget_of, created, members};
use super::{Context, Error, observe};
use crate::api::BatchRun;
use crate::plan::{
    Demand, Launch, Observed, Seat, fresh_batches, plan, plan_invalid, seat_of, share, universe,
};

pub async fn reconcile(run: Arc<BatchRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = run.namespace().ok_or(Error::NoNamespace)?;
    let span = info_span!("reconcile", run = %run.name_any(), namespace = %namespace);
    let api: Api<BatchRun> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, CLEANUP_FINALIZER, run, |event| async {
        match event {
            Finalizer::Apply(run) => apply(&run, &api, &ctx).await,
            Finalizer::Cleanup(run) => cleanup(&run, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .observe_reconcile(started.elapsed(), result.is_err());
    result
}

async fn apply(cached: &BatchRun, api: &Api<BatchRun>, ctx: &Context) -> Result<Action, Error> {
    if !ctx.caches_ready.load(Ordering::Relaxed) {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    // The controller's cache may not hold our last status write yet; planning from an old
    // ledger would relaunch finished batches, so the run is read fresh.
    ctx.metrics.count_request("get", "batchruns");
    let run = api.get(&cached.name_any()).await?;
    let uid = run.uid().unwrap_or_default();
    let namespace = run.namespace().ok_or(Error::NoNamespace)?;
    let worker = worker_container(&run);
    let jobs = ctx.jobs.state();
    let pods = ctx.pods.state();
    let owned =
        |labels: &std::collections::BTreeMap<String, String>| labels.get(RUN_UID) == Some(&uid);
    let attempts = observe::attempts(
        jobs.iter()
            .filter(|j| owned(j.labels()))
            .map(|j| j.as_ref()),
        pods.iter()
            .filter(|p| owned(p.labels()))
            .map(|p| p.as_ref()),
        &worker,
    );
    let status = run.status.clone().unwrap_or_default();
    let memory = ctx
        .guard
        .as_ref()
        .map(|view| view.get(&uid).unwrap_or_default());
    let mut observed = Observed {
        run_name: &run.name_any(),
        run_uid: &uid,
        generation: run.metadata.generation.unwrap_or_default(),
        spec: &run.spec,
        status: &status,
        attempts: &attempts,
        now: jiff::Timestamp::now(),
        memory: memory.as_ref(),
        seat: None,
        retry_request: run.annotations().get(RETRY_FAILED).map(String::as_str),
    };
    let bytes_each = match check_spec(&run) {
        Ok(bytes_each) => bytes_each,
        Err(message) => return execute(&run, plan_invalid(&observed, message), ctx, None).await,
    };
    let Some(queue) = &run.spec.queue else {
        return execute(&run, plan(&observed), ctx, None).await;
    };
    // One run of a queue at a time decides and creates its Jobs: the next one must see them.
    let entry = ctx.queues.entry(&namespace, queue);
    let _turn = entry.turn.lock().await;
    let wanted = plan(&observed).launch.len();
    observed.seat = Some(seat(&run, queue, wanted, bytes_each, &entry, ctx));
    let plan = plan(&observed);
    tracing::debug!(
        launches = plan.launch.len(),
        wanted,
        releases = plan.release.len(),
        status_write = plan.status.is_some(),
        "planned"
    );
    execute(&run, plan, ctx, Some(&entry)).await
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
        Err(message) => {
            return refuse(
                "InvalidQueue",
                format!("BatchQueue {queue_name}: {message}"),
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

/// What the schema cannot say about a spec: can a Job be built from it at all. Returns the
/// memory one worker pod may hold, which is what a queue admits.
fn check_spec(run: &BatchRun) -> Result<u64, String> {
    let first = fresh_batches(
        universe(&run.spec),
        run.spec.input.batch_size,
        &Default::default(),
        1,
    );
    let Some(range) = first.first().copied() else {
        return Err("spec.input holds no records".into());
    };
    let job = build_job(run, &Launch { range, attempt: 1 }).map_err(|e| e.to_string())?;
    Ok(job_memory_bytes(&job))
}

/// A deleted run releases its worker pods (they hold the result finalizer) and its Jobs.
async fn cleanup(run: &BatchRun, ctx: &Context) -> Result<Action, Error> {
    let namespace = run.namespace().ok_or(Error::NoNamespace)?;
    let uid = run.uid().unwrap_or_default();
    let selector = format!("{RUN_UID}={uid}");
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    jobs.delete_collection(&params, &ListParams::default().labels(&selector))
        .await?;
    for pod in pods.list(&ListParams::default().labels(&selector)).await? {
        if pod.finalizers().iter().any(|f| f == RESULT_FINALIZER) {
            release_finalizer(&pods, &pod, ctx).await?;
        }
    }
    ctx.metrics.forget_run(&namespace, &run.name_any());
    ctx.queues.forget_run(&namespace, &uid);
    tracing::info!(run = %run.name_any(), "run deleted: its Jobs are removed and its pods released");
    Ok(Action::await_change())
}
