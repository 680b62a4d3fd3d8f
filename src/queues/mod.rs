//! The operator's memory of its BatchQueues, kept only where the cluster cannot answer yet:
//! Jobs created but not yet in the cache, and what each queued run would start. Neither is
//! needed for safety after a restart: the caches are complete before the first reconcile.
//!
//! Its own module, below the controller and the guard: the controller admits batches through
//! it and the guard charges a resize to the same queue, in the same admission turn.

mod usage;

pub use usage::queue_holdings;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ObjectMeta;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};

use crate::api::labels::QUEUE;
use crate::api::{BadQuantity, BatchQueue, BatchRun, Phase, memory_bytes};
use crate::plan::{Budget, Demand, Holding};

/// A created Job the cache has not shown within this long was never created after all.
const EXPECTATION_TTL: Duration = Duration::from_secs(60);
/// A run that has not reconciled for this long is asked again (it resyncs every 5 minutes).
const WANT_TTL: Duration = Duration::from_secs(600);

/// Every queue the operator has admitted batches to. Clones share the same queues: the
/// controller and the guard hold one each.
#[derive(Clone, Default)]
pub struct Queues {
    entries: Arc<Mutex<Registry>>,
}

/// Queue entries by (namespace, queue name).
type Registry = HashMap<(String, String), Arc<QueueEntry>>;

/// One queue: a turn that serializes admission, and the in-flight facts.
#[derive(Default)]
pub struct QueueEntry {
    /// Held from deciding a run's share until its Jobs are created: two runs deciding at
    /// once would both see the same free room.
    pub turn: tokio::sync::Mutex<()>,
    memory: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    /// Jobs being created or created, by name, until the cache shows them.
    expected: HashMap<String, (Holding, Instant)>,
    /// What each run (by uid) would start, as of its last reconcile.
    wants: HashMap<String, (Demand, Instant)>,
    /// When each run was last admitted a batch, as a sequence number.
    served: HashMap<String, u64>,
    /// Jobs whose pod the cluster refuses: until they get one, they hold nothing.
    pod_refused: std::collections::HashSet<String>,
    next_serve: u64,
}

impl Queues {
    pub fn entry(&self, namespace: &str, queue: &str) -> Arc<QueueEntry> {
        let mut entries = self.entries.lock().expect("queue registry poisoned");
        entries
            .entry((namespace.to_string(), queue.to_string()))
            .or_default()
            .clone()
    }

    /// A deleted run waits no more in any queue of its namespace.
    pub fn forget_run(&self, namespace: &str, run_uid: &str) {
        let entries = self.entries.lock().expect("queue registry poisoned");
        for ((ns, _), entry) in entries.iter() {
            if ns == namespace {
                let mut memory = entry.memory();
                memory.wants.remove(run_uid);
                memory.served.remove(run_uid);
            }
        }
    }
}

impl QueueEntry {
    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().expect("queue memory poisoned")
    }

    /// A Job of this queue whose pod the cluster refuses (quota, admission): it holds no room.
    pub fn pod_refused(&self, job_name: &str) {
        self.memory().pod_refused.insert(job_name.to_string());
    }

    /// Counts a Job about to be created until the cache shows it.
    pub fn expect(&self, job_name: &str, holding: Holding) {
        self.memory()
            .expected
            .insert(job_name.to_string(), (holding, Instant::now()));
    }

    /// The create failed: the Job will never hold memory.
    pub fn unexpect(&self, job_name: &str) {
        self.memory().expected.remove(job_name);
    }

    /// What the queue's workers hold: the cache's Jobs and pods plus the Jobs created but not
    /// yet seen. Expectations the cache now shows are retired.
    pub fn holdings(
        &self,
        namespace: &str,
        queue: &str,
        jobs: &Store<Job>,
        pods: &Store<Pod>,
    ) -> Vec<Holding> {
        let in_queue = |meta: &ObjectMeta| {
            meta.namespace.as_deref() == Some(namespace)
                && meta
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(QUEUE))
                    .map(String::as_str)
                    == Some(queue)
        };
        let jobs = jobs.state();
        let pods = pods.state();
        let refused = std::mem::take(&mut self.memory().pod_refused);
        let (mut holdings, seen) = queue_holdings(
            jobs.iter()
                .filter(|j| in_queue(j.meta()) && !refused.contains(&j.name_any()))
                .map(|j| j.as_ref()),
            pods.iter()
                .filter(|p| in_queue(p.meta()))
                .map(|p| p.as_ref()),
        );
        let mut memory = self.memory();
        // A refused Job is remembered while it exists; its run names it again when it looks.
        memory.pod_refused = refused
            .into_iter()
            .filter(|j| jobs.iter().any(|job| job.name_any() == *j))
            .collect();
        memory
            .expected
            .retain(|name, (_, since)| !seen.contains(name) && since.elapsed() < EXPECTATION_TTL);
        holdings.extend(memory.expected.values().map(|(h, _)| h.clone()));
        holdings
    }

    /// Records what a run still waits for after its round, and that it was served if it was.
    pub fn record(&self, unmet: Demand, served: bool) {
        let mut memory = self.memory();
        if served {
            memory.next_serve += 1;
            let next = memory.next_serve;
            memory.served.insert(unmet.run.clone(), next);
        }
        memory
            .wants
            .insert(unmet.run.clone(), (unmet, Instant::now()));
    }

    /// When the queue last served a run (0: never, or not since the operator started).
    pub fn last_served(&self, run_uid: &str) -> u64 {
        self.memory().served.get(run_uid).copied().unwrap_or(0)
    }

    /// The demands of the queue's runs: what each recorded at its last reconcile, or, for a
    /// member that has not reconciled yet (the operator just started, the run was just
    /// created), one batch, so that the first run to reconcile does not take every slot.
    pub fn demands<'a>(&self, members: impl IntoIterator<Item = &'a BatchRun>) -> Vec<Demand> {
        let mut memory = self.memory();
        memory.wants.retain(|_, (_, at)| at.elapsed() < WANT_TTL);
        let mut demands: Vec<Demand> = memory.wants.values().map(|(d, _)| d.clone()).collect();
        for run in members {
            let uid = run.uid().unwrap_or_default();
            if memory.wants.contains_key(&uid) {
                continue;
            }
            let finished = matches!(
                run.status.as_ref().and_then(|s| s.phase),
                Some(Phase::Succeeded | Phase::Failed)
            );
            if finished || run.spec.suspend {
                continue;
            }
            demands.push(Demand {
                last_served: memory.served.get(&uid).copied().unwrap_or(0),
                run: uid,
                name: run.name_any(),
                created: created(run),
                batches: 1,
                bytes_each: memory_bytes(&run.spec.resources.memory.limit).unwrap_or(0),
            });
        }
        demands
    }
}

/// The runs of a namespace that name a queue, from the controller's cache.
pub fn members(runs: &Store<BatchRun>, namespace: &str, queue: &str) -> Vec<Arc<BatchRun>> {
    runs.state()
        .into_iter()
        .filter(|r| {
            r.namespace().as_deref() == Some(namespace) && r.spec.queue.as_deref() == Some(queue)
        })
        .collect()
}

/// When a run was created: older runs go first among equals.
pub fn created(run: &BatchRun) -> jiff::Timestamp {
    run.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_default()
}

/// A queue's limits, or why it has none.
/// A BatchQueue whose budget cannot be read; its message names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("spec.memory: {0}")]
pub struct InvalidBudget(#[from] BadQuantity);

pub fn budget_of(queue: &BatchQueue) -> Result<Budget, InvalidBudget> {
    let memory_bytes = memory_bytes(&queue.spec.memory)?;
    Ok(Budget {
        memory_bytes,
        max_batches: queue.spec.max_batches,
        fairness: queue.spec.fairness,
    })
}
