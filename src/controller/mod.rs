//! The controller: watches BatchRuns, their Jobs and worker pods, and reconciles each run by
//! observe → plan → execute.

mod error;
mod events;
mod executor;
#[cfg(test)]
mod executor_tests;
mod expectations;
pub mod job;
pub mod observe;
mod queue_status;
mod reconcile;
mod setbacks;
mod written;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};

use crate::api::{BatchQueue, BatchRun, labels};
use crate::guard::poller::Poller;
use crate::guard::view::GuardView;
use crate::metrics::Metrics;
use crate::prometheus::Prometheus;
use crate::prometheus::promql::MemoryMetric;
use crate::queues;
pub use error::Error;
pub use reconcile::reconcile;

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub jobs: Store<Job>,
    pub pods: Store<Pod>,
    /// The Job and pod caches hold their first full list: until then the planner would
    /// mistake unseen Jobs for missing ones.
    pub caches_ready: AtomicBool,
    /// What the memory guard sees; `None` when it is off.
    pub guard: Option<GuardView>,
    pub queue_store: Store<BatchQueue>,
    /// The controller's cache of runs: which runs share a queue.
    pub runs: Store<BatchRun>,
    pub queues: queues::Queues,
    /// Refused Job creations and failed reconciles, per run: what backs them off.
    pub setbacks: setbacks::Setbacks,
    /// The last status this process wrote, per run: when the cache shows it, no fresh read.
    pub last_writes: written::LastWrites,
    /// Jobs created or deleted that the Job cache does not show yet, per run.
    pub expectations: expectations::Expectations,
}

/// How the memory guard runs, when it does.
pub struct GuardSettings {
    pub prometheus: Prometheus,
    pub metric: MemoryMetric,
    pub interval: Duration,
    /// Samples older than this are not trusted (see `--memory-max-sample-age`).
    pub max_sample_age: Duration,
}

/// Runs the controller until a shutdown signal, over one namespace or all of them.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    guard: Option<GuardSettings>,
) {
    let (runs, queues_api, jobs_api, pods_api) = match &namespace {
        Some(ns) => (
            Api::<BatchRun>::namespaced(client.clone(), ns),
            Api::<BatchQueue>::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (
            Api::<BatchRun>::all(client.clone()),
            Api::<BatchQueue>::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    // Runs look their queue up in a cache of their own: a store that a Controller waits on
    // must not be waited on elsewhere (its readiness wakes a single waiter).
    let (queue_store, queue_writer) = reflector::store::<BatchQueue>();
    let queue_stream = watcher(queues_api.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(queue_writer)
        .touched_objects();
    let queue_controller = Controller::new(queues_api, watcher::Config::default());
    tracing::info!(
        namespace = namespace.as_deref().unwrap_or("(all)"),
        "starting the controllers"
    );
    let managed = watcher::Config::default().labels(&labels::managed_selector());
    let (jobs, job_writer) = reflector::store::<Job>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let job_stream = watcher(jobs_api, managed.clone())
        .default_backoff()
        .modify(|job: &mut Job| job.managed_fields_mut().clear())
        .reflect(job_writer)
        .touched_objects();
    let pod_stream = watcher(pods_api, managed)
        .default_backoff()
        .modify(|pod: &mut Pod| pod.managed_fields_mut().clear())
        .reflect(pod_writer)
        .touched_objects();

    metrics.runs.expect_errors(Error::METRIC_LABELS);
    let reporter = Reporter {
        controller: "batchguard".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let controller = Controller::new(runs, watcher::Config::default());
    let run_store = controller.store();
    let view = guard.as_ref().map(|_| GuardView::default());
    let recorder = Recorder::new(client.clone(), reporter);
    let context = Arc::new(Context {
        client: client.clone(),
        recorder: recorder.clone(),
        metrics: metrics.clone(),
        jobs: jobs.clone(),
        pods: pods.clone(),
        caches_ready: AtomicBool::new(false),
        guard: view.clone(),
        queue_store: queue_store.clone(),
        runs: run_store.clone(),
        queues: Default::default(),
        setbacks: Default::default(),
        last_writes: Default::default(),
        expectations: Default::default(),
    });
    let pod_store = pods.clone();
    let job_store = jobs.clone();
    let watcher_ready = context.clone();
    tokio::spawn(async move {
        let (a, b, c) = futures::join!(
            jobs.wait_until_ready(),
            pods.wait_until_ready(),
            queue_store.wait_until_ready()
        );
        if a.is_ok() && b.is_ok() && c.is_ok() {
            watcher_ready.caches_ready.store(true, Ordering::Relaxed);
            ready.store(true, Ordering::Relaxed);
            tracing::info!("job and pod caches synced");
        }
    });

    let (trigger, triggered) = futures::channel::mpsc::unbounded();
    if let (Some(settings), Some(view)) = (guard, view) {
        let poller = Poller {
            client,
            prometheus: settings.prometheus,
            metric: settings.metric,
            interval: settings.interval,
            max_sample_age: settings.max_sample_age,
            runs: run_store.clone(),
            pods: pod_store,
            jobs: job_store,
            view,
            metrics,
            recorder,
            trigger,
            queues: context.queues.clone(),
            queue_store: context.queue_store.clone(),
        };
        tokio::spawn(poller.run());
    }
    let queue_context = context.clone();
    let queues = queue_controller
        .shutdown_on_signal()
        .run(queue_status::reconcile, queue_error_policy, queue_context)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "queue status not written");
            }
        });
    let runs = controller
        .owns_stream(job_stream)
        .reconcile_on(triggered)
        // A changed queue (a budget raised) looks at its runs at once.
        .watches_stream(queue_stream, move |queue: BatchQueue| {
            let namespace = queue.namespace().unwrap_or_default();
            queues::members(&run_store, &namespace, &queue.name_any())
                .iter()
                .map(|r| ObjectRef::from_obj(r.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches_stream(pod_stream, |pod: Pod| {
            let run = pod.labels().get(labels::RUN)?.clone();
            Some(ObjectRef::<BatchRun>::new(&run).within(&pod.namespace()?))
        })
        .with_config(ControllerConfig::default().concurrency(16))
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "reconcile did not complete");
            }
        });
    futures::join!(runs, queues);
}

fn queue_error_policy(queue: Arc<BatchQueue>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(queue = %queue.name_any(), %error, "queue status not written, retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Failed reconciles of a run back off exponentially (5 s, 10 s, … 5 min), per run; a
/// successful reconcile resets its count (`setbacks::error_backoff`).
fn error_policy(run: Arc<BatchRun>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.setbacks.failed(&run.uid().unwrap_or_default());
    tracing::warn!(
        run = %run.name_any(),
        namespace = run.namespace().unwrap_or_default(),
        step = error.metric_label(),
        %error,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}
