//! Shows each BatchQueue what it holds and who waits, in its status and in metrics. Writes
//! only when a figure changed; reads the same caches admission uses.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{Context, Error};
use crate::api::{BatchQueue, BatchQueueStatus, ConditionStatus, WaitingRun, bytes_quantity};
use crate::metrics::QueueUsage;
use crate::plan::{Shares, condition, share};
use crate::queues::{budget_of, members};

/// How often a queue's figures are refreshed.
const REFRESH: Duration = Duration::from_secs(2);
/// Waiting runs listed in the status (the rest are counted).
const MAX_WAITING_SHOWN: usize = 20;

pub async fn reconcile(queue: Arc<BatchQueue>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.caches_ready.load(Ordering::Relaxed) {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let namespace = queue.namespace().ok_or(Error::NoNamespace)?;
    let name = queue.name_any();
    let entry = ctx.queues.entry(&namespace, &name);
    let old = queue.status.clone().unwrap_or_default();
    let generation = queue.metadata.generation;
    let status = match budget_of(&queue) {
        Ok(budget) => {
            let holdings = entry.holdings(&namespace, &name, &ctx.jobs, &ctx.pods);
            let members = members(&ctx.runs, &namespace, &name);
            let demands = entry.demands(members.iter().map(|r| r.as_ref()));
            let shares = share(&budget, &holdings, &demands);
            let status = queue_status(&shares, generation, &old, Timestamp::now());
            ctx.metrics.queues.set_queue(
                &namespace,
                &name,
                QueueUsage {
                    admitted_bytes: status.admitted_bytes,
                    admitted_batches: status.admitted_batches,
                    waiting_batches: status.waiting_batches,
                    budget_bytes: budget.memory_bytes,
                },
            );
            status
        }
        Err(invalid) => BatchQueueStatus {
            observed_generation: generation,
            conditions: vec![condition(
                &old.conditions,
                "Ready",
                ConditionStatus::False,
                "InvalidSpec",
                &invalid.to_string(),
                None,
                Timestamp::now(),
            )],
            ..old.clone()
        },
    };
    if status != old {
        let api: Api<BatchQueue> = Api::namespaced(ctx.client.clone(), &namespace);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map_err(|source| Error::WriteQueueStatus {
            queue: name.clone(),
            source,
        })?;
    }
    Ok(Action::requeue(REFRESH))
}

/// The status for one round of figures (pure).
fn queue_status(
    shares: &Shares,
    generation: Option<i64>,
    old: &BatchQueueStatus,
    now: Timestamp,
) -> BatchQueueStatus {
    let waiting_batches: usize = shares.waiting.iter().map(|w| w.batches).sum();
    let saturated = if shares.waiting.is_empty() {
        (
            ConditionStatus::False,
            "RoomAvailable",
            "no run waits for room".to_string(),
        )
    } else {
        (
            ConditionStatus::True,
            "RunsWaiting",
            format!(
                "{} runs wait with {waiting_batches} batches",
                shares.waiting.len()
            ),
        )
    };
    let conditions = vec![
        condition(
            &old.conditions,
            "Ready",
            ConditionStatus::True,
            "Valid",
            "the queue admits batches",
            None,
            now,
        ),
        condition(
            &old.conditions,
            "Saturated",
            saturated.0,
            saturated.1,
            &saturated.2,
            None,
            now,
        ),
    ];
    BatchQueueStatus {
        observed_generation: generation,
        admitted_memory: Some(bytes_quantity(shares.held_bytes)),
        admitted_bytes: shares.held_bytes,
        admitted_batches: shares.held_batches as u64,
        waiting_batches: waiting_batches as u64,
        waiting_runs: shares
            .waiting
            .iter()
            .take(MAX_WAITING_SHOWN)
            .map(|w| WaitingRun {
                name: w.name.clone(),
                position: w.position,
                waiting_batches: w.batches as u64,
                admitted_batches: w.held as u64,
            })
            .collect(),
        conditions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Waiting;

    #[test]
    fn status_shows_holdings_and_waiting_runs_in_order() {
        let shares = Shares {
            held_bytes: 1536 << 20,
            held_batches: 3,
            granted: Default::default(),
            waiting: vec![
                Waiting {
                    run: "u2".into(),
                    name: "client-b".into(),
                    position: 1,
                    batches: 4,
                    held: 0,
                },
                Waiting {
                    run: "u1".into(),
                    name: "client-a".into(),
                    position: 2,
                    batches: 6,
                    held: 3,
                },
            ],
        };
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let status = queue_status(&shares, Some(2), &Default::default(), now);
        assert_eq!(status.admitted_memory.as_deref(), Some("1536Mi"));
        assert_eq!(status.admitted_batches, 3);
        assert_eq!(status.waiting_batches, 10);
        assert_eq!(status.waiting_runs[0].name, "client-b");
        assert_eq!(status.waiting_runs[1].admitted_batches, 3);
        let saturated = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Saturated")
            .unwrap();
        assert_eq!(
            (saturated.status.as_str(), saturated.message.as_str()),
            ("True", "2 runs wait with 10 batches")
        );
        // Same figures a second later: same status, so nothing is written.
        let later = queue_status(&shares, Some(2), &status, now + Duration::from_secs(1));
        assert_eq!(later, status);
    }
}
