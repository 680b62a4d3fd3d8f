//! The poller: every interval, one query over the live workers of every guarded run, then
//! each run's decided actions on its share of the answer; runs act concurrently, a bounded
//! number at once. A pod is annotated with the action before it is deleted, so a crash between
//! the two never repeats the action, the next poll retries a delete still owed, and the
//! planner can tell a stopped worker from a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use futures::future::FutureExt;
use futures::stream::FuturesUnordered;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Semaphore;

use super::decide::{Decision, Worker, decide, unfinished, unseen_reason};
use super::measure::{Answer, Measured, groups, share};
use super::resize::{
    Pressure, RESIZE_AT_ANNOTATION, RESIZE_TO_ANNOTATION, RESIZES_ANNOTATION, Sizes, Use,
    on_pressure, resizes_of, sizes_of,
};
use super::view::GuardView;
use crate::api::kube_facts::running;
use crate::api::labels::{GuardMark, JOB_NAME, RUN_UID};
use crate::api::worker_pod::{WorkerSpec, sdk_threshold, worker_of};
use crate::api::{BatchQueue, BatchRun, GuardAction, Phase, bytes_quantity};
use crate::metrics::Metrics;
use crate::plan::Blindness;
use crate::prometheus::Prometheus;
use crate::prometheus::promql::{MemoryMetric, worker_memory_query};
use crate::queues::{QueueEntry, Queues, budget_of};

pub struct Poller {
    pub client: Client,
    pub prometheus: Prometheus,
    pub metric: MemoryMetric,
    pub interval: Duration,
    /// Samples older than this are a dead container's leftovers; it follows the scrape
    /// interval (plus cAdvisor's housekeeping), not the poll interval.
    pub max_sample_age: Duration,
    pub runs: Store<BatchRun>,
    pub pods: Store<Pod>,
    /// A pod's Job, for what the pod spec lacks (its worker's limit).
    pub jobs: Store<Job>,
    pub view: GuardView,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Asks the controller to reconcile a run whose guard view changed.
    pub trigger: UnboundedSender<ObjectRef<BatchRun>>,
    /// The controller's queues: a resize is charged to the run's BatchQueue in the same turn
    /// as admissions.
    pub queues: Queues,
    pub queue_store: Store<BatchQueue>,
}

/// Runs acting at once: their actions are API calls.
const MAX_CONCURRENT_RUNS: usize = 8;

/// A run to poll now, with its running workers.
struct Guarded {
    run: Arc<BatchRun>,
    uid: String,
    namespace: String,
    live: Vec<(Arc<Pod>, WorkerSpec)>,
}

impl Guarded {
    fn measured(&self) -> Vec<Measured<'_>> {
        self.live
            .iter()
            .map(|(pod, worker)| Measured {
                namespace: &self.namespace,
                pod: pod.metadata.name.as_deref().unwrap_or_default(),
                container: &worker.container,
                limit: worker.limit.as_ref().map(|(_, bytes)| *bytes),
            })
            .collect()
    }
}

impl Poller {
    /// Every tick, sends one query for the runs not still acting on an earlier poll, and has
    /// each act on its share of the answer, a bounded number at once: a run slow to act holds
    /// up only itself.
    pub async fn run(self) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let bound = Semaphore::new(MAX_CONCURRENT_RUNS);
        let mut in_flight = FuturesUnordered::new();
        let mut busy: BTreeSet<String> = BTreeSet::new();
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let guarded = self.guarded(&busy);
                    let measured: Vec<Vec<Measured>> =
                        guarded.iter().map(Guarded::measured).collect();
                    let groups = groups(measured.iter().map(Vec::as_slice));
                    let query = (!groups.is_empty()).then(|| {
                        worker_memory_query(
                            self.metric,
                            &groups,
                            self.max_sample_age.as_secs().max(1),
                        )
                    });
                    // Sent once the first run awaits it; every run reads the same answer.
                    let answer = self.measure(query, guarded.len()).shared();
                    for run in guarded {
                        busy.insert(run.uid.clone());
                        let (this, bound, answer) = (&self, &bound, answer.clone());
                        in_flight.push(async move {
                            this.poll_run(&run, answer, bound).await;
                            run.uid
                        });
                    }
                }
                Some(uid) = in_flight.next(), if !in_flight.is_empty() => {
                    busy.remove(&uid);
                }
            }
        }
    }

    /// The runs to poll now: not finished, not still acting on an earlier poll, with running
    /// workers, each read through its own worker container against its own limit (the run's
    /// spec may have changed since its Job was built). A finished run's view is forgotten.
    fn guarded(&self, busy: &BTreeSet<String>) -> Vec<Guarded> {
        let mut pods_of: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
        for pod in self.pods.state() {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Some(uid) = pod.labels().get(RUN_UID) {
                pods_of.entry(uid.clone()).or_default().push(pod);
            }
        }
        self.runs
            .state()
            .into_iter()
            .filter_map(|run| {
                let uid = run.uid()?;
                let namespace = run.namespace()?;
                if matches!(
                    run.status.as_ref().and_then(|s| s.phase),
                    Some(Phase::Succeeded | Phase::Failed)
                ) {
                    self.view.forget(&uid);
                    return None;
                }
                if busy.contains(&uid) {
                    return None;
                }
                let live: Vec<(Arc<Pod>, WorkerSpec)> = pods_of
                    .remove(&uid)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| {
                        let job = p
                            .labels()
                            .get(JOB_NAME)
                            .and_then(|job| self.jobs.get(&ObjectRef::new(job).within(&namespace)));
                        let worker = worker_of(&p, job.as_deref())?;
                        running(&p, &worker.container).then_some((p, worker))
                    })
                    .collect();
                (!live.is_empty()).then_some(Guarded {
                    run,
                    uid,
                    namespace,
                    live,
                })
            })
            .collect()
    }

    /// Sends the poll's one query (none when no worker can be measured) and counts it. Its
    /// own span: the first run to await the answer is not the one it is about.
    #[tracing::instrument(name = "measure", skip_all, fields(runs = runs))]
    async fn measure(&self, query: Option<String>, runs: usize) -> Arc<Answer> {
        let Some(query) = query else {
            return Arc::new(Ok(BTreeMap::new()));
        };
        let started = Instant::now();
        let result = self.prometheus.pod_values(&query).await;
        self.metrics
            .guard
            .observe_query(started.elapsed(), result.is_err());
        Arc::new(match result {
            Ok(values) => Ok(values.into_iter().collect()),
            Err(error) => {
                tracing::warn!(%error, "memory guard is blind");
                Err(format!("Prometheus query failed: {error}"))
            }
        })
    }

    #[tracing::instrument(name = "poll", skip_all, fields(
        run = %guarded.run.name_any(),
        namespace = guarded.namespace,
    ))]
    async fn poll_run(
        &self,
        guarded: &Guarded,
        answer: impl Future<Output = Arc<Answer>>,
        bound: &Semaphore,
    ) {
        let Guarded {
            run,
            uid,
            namespace,
            live,
        } = guarded;
        let (run, uid, namespace) = (run.as_ref(), uid.as_str(), namespace.as_str());
        let before = self.view.get(uid);
        let limit_of = |pod: &str| {
            live.iter()
                .find(|(p, _)| p.name_any() == pod)
                .and_then(|(_, w)| w.limit.clone())
        };

        // Deletes owed by earlier actions need no memory data: they go first, blind or not.
        let marked: Vec<Worker> = live
            .iter()
            .map(|(p, _)| Worker {
                pod: p.metadata.name.as_deref().unwrap_or_default(),
                mark: mark_of(p),
                fraction: None,
            })
            .collect();
        let owed = unfinished(&run.spec.memory_guard, &marked);
        if !owed.is_empty() {
            let Ok(_acting) = bound.acquire().await else {
                return;
            };
            self.act_all(run, namespace, owed, live).await;
        }

        let samples = share(&guarded.measured(), &*answer.await);
        let Ok(_acting) = bound.acquire().await else {
            return;
        };
        let now = jiff::Timestamp::now();
        let samples = match samples {
            Ok(samples) => samples,
            Err(reason) => {
                self.set_blind(run, uid, reason, now).await;
                return;
            }
        };
        let names: Vec<&str> = marked.iter().map(|w| w.pod).collect();
        // A worker that started a moment ago may not be scraped yet; one without a readable
        // limit cannot be measured at all.
        let unseen: Vec<&str> = live
            .iter()
            .filter(|(p, _)| {
                !samples.contains_key(&p.name_any()) && running_for(p) > self.max_sample_age
            })
            .map(|(p, _)| p.metadata.name.as_deref().unwrap_or_default())
            .collect();
        self.view.update(uid, |memory| {
            memory.pods.retain(|pod, _| names.contains(&pod.as_str()));
            for (pod, fraction) in &samples {
                let seen = memory.pods.entry(pod.clone()).or_default();
                seen.fraction = *fraction;
                seen.peak_fraction = seen.peak_fraction.max(*fraction);
                if let Some((_, limit)) = limit_of(pod) {
                    seen.peak_bytes = seen.peak_bytes.max((fraction * limit as f64) as u64);
                }
                if let Some((text, bytes)) = limit_of(pod) {
                    (seen.limit, seen.limit_bytes) = (text, bytes);
                }
            }
        });
        if unseen.is_empty() {
            self.clear_blind(run, uid).await;
        } else {
            self.set_blind(run, uid, unseen_reason(&unseen), now).await;
        }

        let workers: Vec<Worker> = marked
            .into_iter()
            .map(|w| Worker {
                fraction: samples.get(w.pod).copied(),
                ..w
            })
            .collect();
        let decisions = decide(&run.spec.memory_guard, &workers);
        let decisions = self.resize_first(run, namespace, decisions, live).await;
        self.act_all(run, namespace, decisions, live).await;
        if self.view.get(uid) != before {
            let _ = self.trigger.unbounded_send(ObjectRef::from_obj(run));
        }
    }

    /// With a memory ceiling, a worker over the threshold is grown in place when it can be;
    /// the decisions left are the workers to stop (with why they were not grown).
    async fn resize_first(
        &self,
        run: &BatchRun,
        namespace: &str,
        decisions: Vec<Decision>,
        live: &[(Arc<Pod>, WorkerSpec)],
    ) -> Vec<Decision> {
        let max = run.spec.resources.memory.max.as_deref();
        let Some(max) = max.and_then(|m| crate::api::memory_bytes(m).ok()) else {
            return decisions;
        };
        let mut stop = Vec::new();
        for mut decision in decisions {
            let found = live.iter().find(|(p, _)| p.name_any() == decision.pod);
            let Some((pod, worker)) = found.filter(|_| decision.action != GuardAction::Observe)
            else {
                stop.push(decision);
                continue;
            };
            let sizes = sizes_of(pod, &worker.container);
            // A queue's room is read and taken in its admission turn.
            let entry = run
                .spec
                .queue
                .as_ref()
                .map(|q| (q, self.queues.entry(namespace, q)));
            let _turn = match &entry {
                Some((_, entry)) => Some(entry.turn.lock().await),
                None => None,
            };
            let room = entry
                .as_ref()
                .map(|(queue, entry)| self.room(namespace, queue, entry));
            let usage = Use {
                fraction: f64::from(decision.percent) / 100.0,
                last_line: f64::from(sdk_threshold(&run.spec)) / 100.0,
            };
            match on_pressure(&sizes, Some(max), room, jiff::Timestamp::now(), usage) {
                Pressure::Wait => {}
                Pressure::Resize { request, limit, .. } => {
                    let grown = self
                        .resize(
                            run,
                            namespace,
                            pod,
                            worker,
                            &decision,
                            &sizes,
                            (request, limit),
                        )
                        .await;
                    if let Err(why) = grown {
                        decision.note = Some(why);
                        stop.push(decision);
                    }
                }
                Pressure::Stop { why } => {
                    decision.note = why;
                    stop.push(decision);
                }
            }
        }
        stop
    }

    /// Bytes the queue has free now (none when it is missing or invalid).
    fn room(&self, namespace: &str, queue: &str, entry: &QueueEntry) -> u64 {
        let Some(object) = self
            .queue_store
            .get(&ObjectRef::new(queue).within(namespace))
        else {
            return 0;
        };
        let Ok(budget) = budget_of(&object) else {
            return 0;
        };
        let holdings = entry.holdings(namespace, queue, &self.jobs, &self.pods);
        budget.free_bytes(&holdings)
    }

    /// Grows the worker in place: marks the pod with what it asks (a crash between the two
    /// is given up after the resize timeout, then the worker is drained), patches its
    /// `resize` subresource, announces it, and waits for the cache to show the new size so
    /// that the queue's next admission counts it.
    #[allow(clippy::too_many_arguments)]
    async fn resize(
        &self,
        run: &BatchRun,
        namespace: &str,
        pod: &Pod,
        worker: &WorkerSpec,
        decision: &Decision,
        sizes: &Sizes,
        (request, limit): (u64, u64),
    ) -> Result<(), String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let name = &decision.pod;
        let mark = json!({"metadata": {"annotations": {
            RESIZE_TO_ANNOTATION: limit.to_string(),
            RESIZE_AT_ANNOTATION: jiff::Timestamp::now().to_string(),
            RESIZES_ANNOTATION: (resizes_of(pod.annotations()) + 1).to_string(),
        }}});
        pods.patch(name, &PatchParams::default(), &Patch::Merge(&mark))
            .await
            .map_err(|e| format!("could not mark it for a resize: {}", api_message(&e)))?;
        let resources = json!({"spec": {"containers": [{
            "name": worker.container,
            "resources": {
                "requests": {"memory": bytes_quantity(request)},
                "limits": {"memory": bytes_quantity(limit)},
            },
        }]}});
        pods.patch_subresource(
            "resize",
            name,
            &PatchParams::default(),
            &Patch::Strategic(&resources),
        )
        .await
        .map_err(|e| format!("the apiserver refused its resize: {}", api_message(&e)))?;
        let message = format!(
            "pod {name} at {}% of its {} limit (threshold {}%): memory grown in place to a {} limit ({} request)",
            decision.percent,
            bytes_quantity(sizes.limit()),
            run.spec.memory_guard.threshold,
            bytes_quantity(limit),
            bytes_quantity(request),
        );
        tracing::info!(run = %run.name_any(), pod = %name, limit, "memory guard resized a worker");
        self.metrics.guard.count_action("Resized");
        self.publish(run, EventType::Normal, "Resized", message.clone())
            .await;
        if let Some(uid) = run.uid() {
            self.view
                .update(&uid, |memory| memory.last_action = Some(message));
        }
        let key = ObjectRef::new(name).within(namespace);
        for _ in 0..50 {
            let seen = self
                .pods
                .get(&key)
                .map(|p| sizes_of(&p, &worker.container).spec_limit);
            if seen.is_none_or(|bytes| bytes == limit) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    async fn act_all(
        &self,
        run: &BatchRun,
        namespace: &str,
        decisions: Vec<Decision>,
        live: &[(Arc<Pod>, WorkerSpec)],
    ) {
        for decision in decisions {
            let Some((pod, worker)) = live.iter().find(|(p, _)| p.name_any() == decision.pod)
            else {
                continue;
            };
            let limit = worker.limit.as_ref().map_or("unknown", |(text, _)| text);
            self.act(run, namespace, &decision, limit, pod.resource_version())
                .await;
        }
    }

    /// Marks the pod, then deletes it. A failed delete is retried at the next poll (the mark
    /// says it is owed); the action is counted and announced once the pod is stopping.
    ///
    /// A retry deletes only the version of the pod the cache holds: if the cache is behind (the
    /// last delete went through after all), the conflict leaves the pod alone and announces
    /// nothing twice; the next poll sees the pod as it is.
    async fn act(
        &self,
        run: &BatchRun,
        namespace: &str,
        decision: &Decision,
        limit: &str,
        version: Option<String>,
    ) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let threshold = run.spec.memory_guard.threshold;
        let (reason, doing) = match decision.action {
            GuardAction::Drain => (
                "Drained",
                format!(
                    "draining with {}s to checkpoint",
                    decision.grace_seconds.unwrap_or_default()
                ),
            ),
            GuardAction::Restart => ("Restarted", "restarting its unfinished records".to_string()),
            GuardAction::Observe => ("MemoryPressure", "observing only".to_string()),
        };
        let measured = if decision.retry { "was at" } else { "at" };
        let not_grown = decision
            .note
            .as_ref()
            .map(|why| format!(" (not grown in place: {why})"))
            .unwrap_or_default();
        let message = format!(
            "pod {} {measured} {}% of its {limit} limit (threshold {threshold}%): {doing}{not_grown}",
            decision.pod, decision.percent
        );
        if !decision.retry {
            let mark = GuardMark {
                action: decision.action,
                percent: decision.percent,
            };
            let mark = json!({"metadata": {"annotations": mark}});
            if let Err(error) = pods
                .patch(&decision.pod, &PatchParams::default(), &Patch::Merge(&mark))
                .await
            {
                tracing::warn!(pod = %decision.pod, %error, "could not mark the pod; not acting");
                return;
            }
        }
        if let Some(grace) = decision.grace_seconds {
            let params = DeleteParams {
                grace_period_seconds: Some(grace.max(0) as u32),
                preconditions: decision.retry.then_some(Preconditions {
                    resource_version: version,
                    uid: None,
                }),
                ..Default::default()
            };
            match pods.delete(&decision.pod, &params).await {
                Ok(_) => {}
                // Gone already: its worker is stopped, nothing is owed.
                Err(kube::Error::Api(e)) if e.code == 404 => return,
                // The cache was behind: the next poll decides again from the pod as it is.
                Err(kube::Error::Api(e)) if e.code == 409 && decision.retry => return,
                Err(error) => {
                    tracing::warn!(pod = %decision.pod, %error, retry = decision.retry, "could not stop the pod; the next poll retries");
                    if !decision.retry {
                        self.publish(
                            run,
                            EventType::Warning,
                            "GuardActionFailed",
                            format!(
                                "could not stop pod {} ({}); retrying at every poll",
                                decision.pod,
                                api_message(&error)
                            ),
                        )
                        .await;
                    }
                    return;
                }
            }
        }
        tracing::info!(run = %run.name_any(), pod = %decision.pod, percent = decision.percent, action = ?decision.action, retry = decision.retry, "memory guard acted");
        self.metrics.guard.count_action(reason);
        self.publish(run, EventType::Warning, reason, message.clone())
            .await;
        if let Some(uid) = run.uid() {
            self.view
                .update(&uid, |memory| memory.last_action = Some(message));
        }
    }

    async fn set_blind(&self, run: &BatchRun, uid: &str, reason: String, now: jiff::Timestamp) {
        let (mut newly, mut changed) = (false, false);
        self.view.update(uid, |memory| match &mut memory.blind {
            None => {
                newly = true;
                memory.blind = Some(Blindness {
                    since: now,
                    reason: reason.clone(),
                });
            }
            // Still blind, to other pods: the condition says which, the Event is not repeated.
            Some(blind) if blind.reason != reason => {
                changed = true;
                blind.reason = reason.clone();
            }
            Some(_) => {}
        });
        if changed {
            let _ = self.trigger.unbounded_send(ObjectRef::from_obj(run));
        }
        if newly {
            self.publish(
                run,
                EventType::Warning,
                "GuardBlind",
                format!("memory guard cannot see the workers: {reason}"),
            )
            .await;
            let _ = self.trigger.unbounded_send(ObjectRef::from_obj(run));
        }
    }

    async fn clear_blind(&self, run: &BatchRun, uid: &str) {
        let mut was_blind = None;
        self.view
            .update(uid, |memory| was_blind = memory.blind.take());
        if let Some(blind) = was_blind {
            self.publish(
                run,
                EventType::Normal,
                "GuardRecovered",
                format!(
                    "memory guard sees the workers again (blind since {})",
                    blind.since
                ),
            )
            .await;
        }
    }

    async fn publish(&self, run: &BatchRun, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(bounded(note, MAX_NOTE_CHARS)),
            action: "Guard".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &run.object_ref(&())).await {
            tracing::warn!(%error, "could not publish a guard event");
        }
    }
}

fn running_for(pod: &Pod) -> Duration {
    pod.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| jiff::Timestamp::now().duration_since(t.0).unsigned_abs())
        .unwrap_or_default()
}

/// The guard's earlier action on a pod, from its annotations.
fn mark_of(pod: &Pod) -> Option<GuardMark> {
    GuardMark::read(pod.annotations())
}

/// An Event's note may hold at most 1024 characters.
const MAX_NOTE_CHARS: usize = 1024;

/// What the API server said, without the client's wrapping (its full status and debug form).
fn api_message(error: &kube::Error) -> String {
    let text = match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    };
    bounded(text, 300)
}

/// The text cut to `max` characters, ending in an ellipsis when cut.
fn bounded(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        return text;
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_stay_within_what_an_event_holds() {
        assert_eq!(bounded("short".into(), 10), "short");
        let long = bounded("é".repeat(2000), MAX_NOTE_CHARS);
        assert_eq!(long.chars().count(), MAX_NOTE_CHARS);
        assert!(long.ends_with('…'));
    }
}
