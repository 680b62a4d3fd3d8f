//! The executor: applies a plan in the order that keeps results exactly-once — status first,
//! then result finalizers, then new Jobs, then Events.

use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::events::event_for;
use super::job::build_job;
use super::{Context, Error};
use crate::api::kube_facts::job_memory_bytes;
use crate::api::labels::{RESULT_FINALIZER, finalizer_removal, job_name};
use crate::api::{BatchReason, BatchRun};
use crate::metrics::RunFigures;
use crate::plan::{Holding, Notice, Plan, Settled};
use crate::queues::QueueEntry;

/// Requests sent at once when many batches launch or finish together.
const IN_FLIGHT: usize = 8;
/// Look at a running run at least this often, whatever the watches say.
const RESYNC: Duration = Duration::from_secs(300);

/// `queue`, for a queued run, learns of each Job before it is created, so the queue's next
/// admission counts it even before the cache shows it.
#[tracing::instrument(skip_all, fields(
    run = %run.name_any(),
    status_write = plan.status.is_some(),
    releases = plan.release.len(),
    launches = plan.launch.len(),
))]
pub async fn execute(
    run: &BatchRun,
    plan: Plan,
    ctx: &Context,
    queue: Option<&QueueEntry>,
) -> Result<Action, Error> {
    let name = run.name_any();
    let namespace = run.namespace().ok_or(Error::NoNamespace)?;
    let runs: Api<BatchRun> = Api::namespaced(ctx.client.clone(), &namespace);

    if let Some(status) = &plan.status {
        // The resourceVersion makes this write conditional: a plan made from an old read
        // must not overwrite a newer ledger.
        let body =
            json!({"metadata": {"resourceVersion": run.resource_version()}, "status": status});
        match runs
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(written) => ctx
                .last_writes
                .wrote(&run.uid().unwrap_or_default(), written.resource_version()),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::debug!("status changed under us; planning again");
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            Err(source) => {
                return Err(Error::WriteStatus {
                    run: name.clone(),
                    source,
                });
            }
        }
        let (done, records) = status.progress_counts().unwrap_or((0, 0));
        let phase = status.phase.map(|p| format!("{p:?}")).unwrap_or_default();
        ctx.metrics.runs.observe_run(
            &namespace,
            &name,
            RunFigures {
                phase: &phase,
                live_workers: status.batches.running,
                records_done: done,
                records,
                peak_memory_percent: status.guard.peak_percent,
            },
        );
    }

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let cached: Vec<_> = plan
        .release
        .iter()
        .map(|pod_name| ctx.pods.get(&ObjectRef::new(pod_name).within(&namespace)))
        .collect();
    // Releases and launches are independent once the status is written; launches are on
    // the run's critical path, so both go at once.
    let released = stream::iter(cached)
        .map(|cached| {
            let pods = pods.clone();
            async move {
                match cached {
                    Some(pod) => release_finalizer(&pods, &pod).await,
                    None => Ok(()),
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>();

    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let uid = run.uid().unwrap_or_default();
    let generation = run.metadata.generation.unwrap_or_default();
    let refused = std::sync::atomic::AtomicBool::new(false);
    let refused = &refused;
    let uid = &uid;
    let built: Vec<_> = plan
        .launch
        .iter()
        .map(|launch| (launch.clone(), build_job(run, launch)))
        .collect();
    let created = stream::iter(built)
        .map(|(launch, job)| {
            let jobs = jobs.clone();
            async move {
                let job = match job {
                    Ok(job) => job,
                    Err(e) => {
                        tracing::warn!(range = %launch.range, error = %e, "cannot build the batch Job");
                        return Ok(());
                    }
                };
                let job_name = job.name_any();
                if let Some(queue) = queue {
                    let bytes = job_memory_bytes(&job);
                    queue.expect(&job_name, Holding { run: uid.clone(), bytes });
                }
                let created = jobs.create(&PostParams::default(), &job).await;
                if created.is_err()
                    && let Some(queue) = queue
                {
                    queue.unexpect(&job_name);
                }
                let batch = (launch.range, launch.attempt);
                match created {
                    Ok(_) => {
                        tracing::info!(range = %launch.range, attempt = launch.attempt, "launched batch");
                        ctx.setbacks.accepted(uid);
                        ctx.expectations.created(uid, &job_name, batch);
                        Ok(())
                    }
                    // Same name, same batch attempt: it was launched already.
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        ctx.expectations.created(uid, &job_name, batch);
                        Ok(())
                    }
                    // The apiserver will not take this Job as it is (invalid, forbidden by
                    // quota or admission): the run says so and backs off.
                    Err(kube::Error::Api(e)) if refuses(e.code) => {
                        tracing::warn!(range = %launch.range, code = e.code, message = %e.message, "the apiserver refused the batch Job");
                        ctx.setbacks.refused(uid, generation, e.code, e.message, jiff::Timestamp::now());
                        refused.store(true, std::sync::atomic::Ordering::Relaxed);
                        Ok(())
                    }
                    Err(source) => Err(Error::LaunchJob { job: job_name, source }),
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>();
    // Settled Jobs past their retention go (their pods with them), and pods whose counted
    // worker ended while a sidecar runs on are stopped.
    let removals = plan
        .remove_jobs
        .iter()
        .cloned()
        .map(Removal::Job)
        .chain(plan.stop.iter().cloned().map(Removal::Pod))
        .collect::<Vec<_>>();
    let removed = stream::iter(removals)
        .map(|removal| {
            let (jobs, pods) = (jobs.clone(), pods.clone());
            async move {
                let job = match &removal {
                    Removal::Job(name) => Some(name.clone()),
                    Removal::Pod(_) => None,
                };
                remove(removal, &jobs, &pods).await?;
                if let Some(job) = job {
                    ctx.expectations.deleted(uid, &job);
                }
                Ok(())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>();
    // join! polls in this order, so releases reach the apiserver ahead of launches
    // (executor_tests pins the order).
    let (released, created, removed) = futures::join!(released, created, removed);

    for notice in &plan.notices {
        count(ctx, notice);
        let job_of = |range, attempt| ObjectReference {
            api_version: Some("batch/v1".into()),
            kind: Some("Job".into()),
            name: Some(job_name(&name, uid, range, attempt)),
            namespace: Some(namespace.clone()),
            ..Default::default()
        };
        if let Some(event) = event_for(notice, job_of)
            && let Err(e) = ctx.recorder.publish(&event, &run.object_ref(&())).await
        {
            tracing::warn!(error = %e, "could not publish an event");
        }
    }

    released
        .into_iter()
        .chain(created)
        .chain(removed)
        .collect::<Result<Vec<()>, Error>>()?;
    if refused.load(std::sync::atomic::Ordering::Relaxed) {
        // At once: the next reconcile writes Stalled and waits out the refusal's backoff.
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    let finished = matches!(
        plan.status
            .as_ref()
            .or(run.status.as_ref())
            .and_then(|s| s.phase),
        Some(crate::api::Phase::Succeeded | crate::api::Phase::Failed)
    );
    Ok(match plan.requeue_after {
        Some(after) => Action::requeue(after.min(RESYNC)),
        None if finished => Action::await_change(),
        None => Action::requeue(RESYNC),
    })
}

enum Removal {
    Job(String),
    Pod(String),
}

/// Deletes a settled Job (in the background: its pods follow) or a pod; gone already is fine.
async fn remove(removal: Removal, jobs: &Api<Job>, pods: &Api<Pod>) -> Result<(), Error> {
    let background = DeleteParams::background();
    let deleted = match &removal {
        Removal::Job(name) => jobs.delete(name, &background).await.map(|_| ()),
        Removal::Pod(name) => pods
            .delete(name, &DeleteParams::default())
            .await
            .map(|_| ()),
    };
    match (deleted, removal) {
        (Ok(()), _) => Ok(()),
        (Err(kube::Error::Api(e)), _) if e.code == 404 => Ok(()),
        (Err(source), Removal::Job(job)) => Err(Error::RemoveJob { job, source }),
        (Err(source), Removal::Pod(pod)) => Err(Error::StopPod { pod, source }),
    }
}

/// Status codes of a Job creation that retrying at once will not change: the Job is invalid
/// (400, 422), or quota or an admission webhook forbids it (403). 409 means it exists; 429 and
/// 5xx are the apiserver's trouble, retried as reconcile errors.
fn refuses(code: u16) -> bool {
    matches!(code, 400 | 403 | 422)
}

/// Removes the result finalizer, and only it: the JSON patch tests the entry it removes, so a
/// concurrent change of the pod's finalizers makes it fail instead of dropping another one.
pub async fn release_finalizer(pods: &Api<Pod>, pod: &Pod) -> Result<(), Error> {
    let Some(patch) = finalizer_removal(pod.finalizers(), RESULT_FINALIZER) else {
        return Ok(());
    };
    match pods
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Gone already, or the finalizers moved: the next reconcile sees the new state.
        Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409 | 422) => Ok(()),
        Err(source) => Err(Error::ReleaseFinalizer {
            pod: pod.name_any(),
            source,
        }),
    }
}

fn count(ctx: &Context, notice: &Notice) {
    let Notice::Settled { settled, .. } = notice else {
        return;
    };
    let result = match settled {
        Settled::Succeeded => "succeeded",
        Settled::Resumed { .. } => "resumed",
        Settled::Retrying { .. } => "retried",
        Settled::SplitAfterOom { .. } => "oom_killed",
        Settled::MoreMemory {
            cause: BatchReason::OomKilled,
            ..
        } => "oom_killed",
        Settled::MoreMemory { .. } => "stopped_by_guard",
        Settled::FailedForGood { .. } => "failed",
        Settled::Stopped { .. } => "stopped_by_guard",
        Settled::DrainedInProcess { .. } => {
            // The operator's guard counts its own actions when it takes them.
            ctx.metrics.guard.count_action("DrainedInProcess");
            "stopped_by_guard"
        }
    };
    ctx.metrics.runs.count_batch(result);
}
