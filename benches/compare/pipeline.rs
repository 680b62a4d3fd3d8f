//! The per-batch pipeline as an outside observer sees it: one watch on the namespace's Jobs
//! and pods stamps when each object first appeared, first ran and ended, so batchguard and
//! the Indexed Job are timed by the same clock with the same watch delay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::stats::percentile;

#[derive(Default)]
struct Stamps {
    jobs: HashMap<String, Instant>,
    /// Per pod: first seen, its Job, first seen Running, first seen ended.
    pods: HashMap<String, PodStamps>,
}

#[derive(Clone)]
struct PodStamps {
    seen: Instant,
    job: Option<String>,
    running: Option<Instant>,
    ended: Option<Instant>,
}

/// Stamps objects until dropped.
pub struct Recorder {
    stamps: Arc<Mutex<Stamps>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

impl Recorder {
    pub async fn start(client: &Client, ns: &str) -> Self {
        let stamps = Arc::new(Mutex::new(Stamps::default()));
        let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let (ready_jobs, jobs_ready) = tokio::sync::oneshot::channel();
        let (ready_pods, pods_ready) = tokio::sync::oneshot::channel();
        let job_stamps = stamps.clone();
        let job_task = tokio::spawn(async move {
            let mut ready = Some(ready_jobs);
            let mut events = watcher::watcher(jobs, watcher::Config::default()).boxed();
            while let Some(Ok(event)) = events.next().await {
                let now = Instant::now();
                match event {
                    Event::InitDone => {
                        ready.take().map(|r| r.send(()));
                    }
                    Event::Apply(job) | Event::InitApply(job) => {
                        job_stamps
                            .lock()
                            .unwrap()
                            .jobs
                            .entry(job.name_any())
                            .or_insert(now);
                    }
                    _ => {}
                }
            }
        });
        let pod_stamps = stamps.clone();
        let pod_task = tokio::spawn(async move {
            let mut ready = Some(ready_pods);
            let mut events = watcher::watcher(pods, watcher::Config::default()).boxed();
            while let Some(Ok(event)) = events.next().await {
                let now = Instant::now();
                let pod = match event {
                    Event::InitDone => {
                        ready.take().map(|r| r.send(()));
                        continue;
                    }
                    Event::Apply(pod) | Event::InitApply(pod) => pod,
                    _ => continue,
                };
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
                let mut stamps = pod_stamps.lock().unwrap();
                let entry = stamps.pods.entry(pod.name_any()).or_insert(PodStamps {
                    seen: now,
                    job: pod.labels().get("batch.kubernetes.io/job-name").cloned(),
                    running: None,
                    ended: None,
                });
                match phase.as_deref() {
                    Some("Running") => {
                        entry.running.get_or_insert(now);
                    }
                    Some("Succeeded" | "Failed") => {
                        entry.running.get_or_insert(now);
                        entry.ended.get_or_insert(now);
                    }
                    _ => {}
                }
            }
        });
        let _ = futures::join!(jobs_ready, pods_ready);
        Self {
            stamps,
            tasks: vec![job_task, pod_task],
        }
    }

    /// The pipeline's latencies in milliseconds. `per_batch_jobs`: batchguard creates a Job
    /// per batch (its "next start" is a Job creation); an Indexed Job creates pods.
    pub fn latencies(&self, parallelism: usize, per_batch_jobs: bool) -> Latencies {
        let stamps = self.stamps.lock().unwrap();
        let mut ends: Vec<Instant> = stamps.pods.values().filter_map(|p| p.ended).collect();
        ends.sort();
        let mut creations: Vec<Instant> = if per_batch_jobs {
            stamps.jobs.values().copied().collect()
        } else {
            stamps.pods.values().map(|p| p.seen).collect()
        };
        creations.sort();
        let mut runnings: Vec<Instant> = stamps.pods.values().filter_map(|p| p.running).collect();
        runnings.sort();
        let ms = |later: Instant, earlier: Instant| {
            later.saturating_duration_since(earlier).as_secs_f64() * 1e3
        };
        // With every slot busy, the k-th batch to end frees the slot the (k+P)-th one takes.
        let end_to_next_create: Vec<f64> = ends
            .iter()
            .zip(creations.iter().skip(parallelism))
            .map(|(end, next)| ms(*next, *end))
            .collect();
        let end_to_next_running: Vec<f64> = ends
            .iter()
            .zip(runnings.iter().skip(parallelism))
            .map(|(end, next)| ms(*next, *end))
            .collect();
        let create_to_running: Vec<f64> = stamps
            .pods
            .values()
            .filter_map(|p| {
                let created = match (&p.job, per_batch_jobs) {
                    (Some(job), true) => *stamps.jobs.get(job)?,
                    _ => p.seen,
                };
                Some(ms(p.running?, created))
            })
            .collect();
        Latencies {
            end_to_next_create: Spread::of(&end_to_next_create),
            create_to_running: Spread::of(&create_to_running),
            end_to_next_running: Spread::of(&end_to_next_running),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub p50: f64,
    pub p95: f64,
    pub count: usize,
}

impl Spread {
    fn of(values: &[f64]) -> Self {
        Self {
            p50: percentile(values, 50.0),
            p95: percentile(values, 95.0),
            count: values.len(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        json!({"p50_ms": self.p50, "p95_ms": self.p95, "count": self.count})
    }

    pub fn pooled(all: &[Spread], pick: impl Fn(&Spread) -> f64) -> f64 {
        crate::stats::median(&all.iter().map(pick).collect::<Vec<_>>())
    }
}

/// From a batch's worker ending to the next batch being created (a Job for batchguard, a pod
/// for the Indexed Job), from that creation to its pod Running, and the slot's whole idle
/// time, from one end to the next pod Running.
#[derive(Clone, Copy, Debug)]
pub struct Latencies {
    pub end_to_next_create: Spread,
    pub create_to_running: Spread,
    pub end_to_next_running: Spread,
}

impl Latencies {
    pub fn json(&self) -> serde_json::Value {
        json!({
            "end_to_next_create": self.end_to_next_create.json(),
            "create_to_running": self.create_to_running.json(),
            "end_to_next_running": self.end_to_next_running.json(),
        })
    }
}
