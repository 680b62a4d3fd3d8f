//! The poller: every interval, one query per run over its live workers, then the decided
//! actions. A pod is annotated with the action before it is deleted, so a crash between the
//! two never repeats the action, and the planner can tell a stopped worker from a failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use super::decide::{Decision, Worker, decide};
use super::prometheus::Prometheus;
use super::promql::{MemoryMetric, worker_memory_query};
use super::view::{Blindness, GuardView};
use super::{ACTION_ANNOTATION, PERCENT_ANNOTATION};
use crate::api::{BatchRun, GuardAction, Phase, memory_bytes};
use crate::controller::job::worker_index;
use crate::controller::labels::RUN_UID;
use crate::metrics::Metrics;

pub struct Poller {
    pub client: Client,
    pub prometheus: Prometheus,
    pub metric: MemoryMetric,
    pub interval: Duration,
    pub runs: Store<BatchRun>,
    pub pods: Store<Pod>,
    pub view: GuardView,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Asks the controller to reconcile a run whose guard view changed.
    pub trigger: UnboundedSender<ObjectRef<BatchRun>>,
}

impl Poller {
    pub async fn run(self) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            for run in self.runs.state() {
                self.poll_run(&run).await;
            }
        }
    }

    /// Samples older than this are a dead container's leftovers.
    fn max_sample_age(&self) -> u32 {
        (self.interval.as_secs() as u32 * 3).max(30)
    }

    async fn poll_run(&self, run: &BatchRun) {
        let Some(uid) = run.uid() else { return };
        let Some(namespace) = run.namespace() else {
            return;
        };
        if matches!(
            run.status.as_ref().and_then(|s| s.phase),
            Some(Phase::Succeeded | Phase::Failed)
        ) {
            self.view.forget(&uid);
            return;
        }
        let Ok(limit) = memory_bytes(&run.spec.resources.memory.limit) else {
            return;
        };
        let Some(container) = run
            .spec
            .template
            .spec
            .as_ref()
            .and_then(|p| worker_index(p).map(|i| p.containers[i].name.clone()))
        else {
            return;
        };
        let live: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| {
                p.labels().get(RUN_UID) == Some(&uid) && p.metadata.deletion_timestamp.is_none()
            })
            .filter(|p| running(p, &container))
            .collect();
        if live.is_empty() {
            return;
        }
        let names: Vec<&str> = live
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap_or_default())
            .collect();
        let query = worker_memory_query(
            self.metric,
            &namespace,
            &container,
            &names,
            self.max_sample_age(),
        );
        let started = Instant::now();
        let result = self.prometheus.pod_values(&query).await;
        self.metrics
            .observe_guard_query(started.elapsed(), result.is_err());
        let now = jiff::Timestamp::now();
        let before = self.view.get(&uid);

        let samples: BTreeMap<String, f64> = match result {
            Ok(values) => values
                .into_iter()
                .map(|(pod, bytes)| (pod, bytes / limit as f64))
                .collect(),
            Err(error) => {
                tracing::warn!(run = %run.name_any(), %error, "memory guard is blind");
                self.set_blind(run, &uid, format!("Prometheus query failed: {error}"), now)
                    .await;
                return;
            }
        };
        // A worker that started a moment ago may not be scraped yet.
        let settle_in = self.interval * 3 + Duration::from_secs(5);
        let unseen: Vec<&str> = live
            .iter()
            .filter(|p| !samples.contains_key(&p.name_any()) && running_for(p) > settle_in)
            .map(|p| p.metadata.name.as_deref().unwrap_or_default())
            .collect();
        self.view.update(&uid, |memory| {
            memory.pods.retain(|pod, _| names.contains(&pod.as_str()));
            for (pod, fraction) in &samples {
                let seen = memory.pods.entry(pod.clone()).or_default();
                seen.fraction = *fraction;
                seen.peak_fraction = seen.peak_fraction.max(*fraction);
            }
        });
        if unseen.is_empty() {
            self.clear_blind(run, &uid).await;
        } else {
            self.set_blind(
                run,
                &uid,
                format!("no fresh memory sample for pod {}", unseen.join(", ")),
                now,
            )
            .await;
        }

        let workers: Vec<Worker> = live
            .iter()
            .map(|p| Worker {
                pod: p.metadata.name.as_deref().unwrap_or_default(),
                acted: p.annotations().contains_key(ACTION_ANNOTATION),
                fraction: samples.get(&p.name_any()).copied(),
            })
            .collect();
        for decision in decide(&run.spec.memory_guard, &workers) {
            self.act(run, &namespace, &decision).await;
        }
        if self.view.get(&uid) != before {
            let _ = self.trigger.unbounded_send(ObjectRef::from_obj(run));
        }
    }

    async fn act(&self, run: &BatchRun, namespace: &str, decision: &Decision) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let limit = &run.spec.resources.memory.limit;
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
        let message = format!(
            "pod {} at {}% of its {limit} limit (threshold {threshold}%): {doing}",
            decision.pod, decision.percent
        );
        let mark = json!({"metadata": {"annotations": {
            ACTION_ANNOTATION: format!("{:?}", decision.action),
            PERCENT_ANNOTATION: decision.percent.to_string(),
        }}});
        self.metrics.count_request("patch", "pods");
        if let Err(error) = pods
            .patch(&decision.pod, &PatchParams::default(), &Patch::Merge(&mark))
            .await
        {
            tracing::warn!(pod = %decision.pod, %error, "could not mark the pod; not acting");
            return;
        }
        if let Some(grace) = decision.grace_seconds {
            self.metrics.count_request("delete", "pods");
            let params = DeleteParams {
                grace_period_seconds: Some(grace.max(0) as u32),
                ..Default::default()
            };
            if let Err(error) = pods.delete(&decision.pod, &params).await {
                tracing::warn!(pod = %decision.pod, %error, "could not stop the pod");
            }
        }
        tracing::info!(run = %run.name_any(), pod = %decision.pod, percent = decision.percent, action = ?decision.action, "memory guard acted");
        self.metrics.count_guard_action(reason);
        self.publish(run, EventType::Warning, reason, message.clone())
            .await;
        if let Some(uid) = run.uid() {
            self.view
                .update(&uid, |memory| memory.last_action = Some(message));
        }
    }

    async fn set_blind(&self, run: &BatchRun, uid: &str, reason: String, now: jiff::Timestamp) {
        let mut newly = false;
        self.view.update(uid, |memory| {
            if memory.blind.is_none() {
                newly = true;
                memory.blind = Some(Blindness {
                    since: now,
                    reason: reason.clone(),
                });
            }
        });
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
            note: Some(note),
            action: "Guard".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &run.object_ref(&())).await {
            tracing::warn!(%error, "could not publish a guard event");
        }
    }
}

/// The worker container is running (not waiting, not terminated).
fn running(pod: &Pod, container: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|all| all.iter().find(|c| c.name == container))
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

fn running_for(pod: &Pod) -> Duration {
    pod.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| jiff::Timestamp::now().duration_since(t.0).unsigned_abs())
        .unwrap_or_default()
}
