//! Resize before drain (pure): a worker above the threshold whose run sets a memory ceiling
//! (`spec.resources.memory.max`) first gets a larger limit in place, through the pod's
//! `resize` subresource, when the ceiling and its queue allow; it is drained only when it
//! cannot grow, or when the kubelet does not apply the resize in time.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

use crate::api::kube_facts::{container_status, memory_of};
use crate::api::{bytes_quantity, in_proportion};

/// Pod annotation: the memory limit (bytes) the guard last asked the kubelet for.
pub const RESIZE_TO_ANNOTATION: &str = "batchguard.dev/resize-to";
/// Pod annotation: when it asked (RFC 3339).
pub const RESIZE_AT_ANNOTATION: &str = "batchguard.dev/resize-at";
/// Pod annotation: how many times the guard grew this pod.
pub const RESIZES_ANNOTATION: &str = "batchguard.dev/resizes";

/// Each resize multiplies the limit by this, at most up to the ceiling; the request grows in
/// the same proportion.
pub const RESIZE_FACTOR: u64 = 2;

/// A resize the kubelet has not applied after this long is given up: the worker is drained.
pub const RESIZE_TIMEOUT: Duration = Duration::from_secs(20);

/// What the guard knows of a worker's memory and of its earlier resize.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sizes {
    /// Limit and request in the pod spec (what was asked last), in bytes.
    pub spec_limit: u64,
    pub spec_request: u64,
    /// Limit the kubelet reports applied (`status.containerStatuses[].resources`).
    pub applied_limit: Option<u64>,
    /// The guard's outstanding ask, from the pod's annotations.
    pub asked: Option<(u64, Timestamp)>,
    /// The pod's `PodResizePending` condition: reason (`Deferred`, `Infeasible`) and message.
    pub pending: Option<(String, String)>,
}

impl Sizes {
    /// The limit the worker runs under now: the applied one when the kubelet reports it.
    pub fn limit(&self) -> u64 {
        self.applied_limit.unwrap_or(self.spec_limit)
    }
}

/// What to do with a worker at or above the threshold.
#[derive(Clone, Debug, PartialEq)]
pub enum Pressure {
    /// Grow it in place to these bytes (`extra` more than the spec holds now).
    Resize {
        request: u64,
        limit: u64,
        extra: u64,
    },
    /// A resize is on its way: neither grow again nor drain yet.
    Wait,
    /// Drain (or restart) it as the run says; `why` tells why it was not grown, when it
    /// could have been.
    Stop { why: Option<String> },
}

/// The worker's memory now, against what it may do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Use {
    /// Fraction of the limit it runs under.
    pub fraction: f64,
    /// Waiting for a resize stops at this fraction: the worker is drained before the kernel
    /// would kill it (the SDK guard's threshold, halfway from the threshold to the limit).
    pub last_line: f64,
}

/// The guard's choice for a worker over the threshold. `room` is what its queue has free
/// (`None` without a queue).
pub fn on_pressure(
    sizes: &Sizes,
    max: Option<u64>,
    room: Option<u64>,
    now: Timestamp,
    usage: Use,
) -> Pressure {
    let Some(max) = max else {
        return Pressure::Stop { why: None };
    };
    if let Some((asked, at)) = sizes.asked
        && sizes.limit() < asked
    {
        let status = sizes
            .pending
            .as_ref()
            .map(|(reason, message)| format!(" ({reason}: {message})"))
            .unwrap_or_default();
        if usage.fraction >= usage.last_line {
            return stop(format!(
                "its resize to {} is not applied yet{status} and it is at {}%",
                bytes_quantity(asked),
                (usage.fraction * 100.0).round()
            ));
        }
        if let Some((reason, message)) = &sizes.pending
            && reason == "Infeasible"
        {
            return stop(format!(
                "the node cannot grow it to {}: {message}",
                bytes_quantity(asked)
            ));
        }
        let waited = now.duration_since(at).unsigned_abs();
        if waited < RESIZE_TIMEOUT {
            return Pressure::Wait;
        }
        return stop(format!(
            "the kubelet did not apply its resize to {} within {}s{status}",
            bytes_quantity(asked),
            RESIZE_TIMEOUT.as_secs()
        ));
    }
    let current = sizes.limit();
    if current >= max {
        return Pressure::Stop { why: None };
    }
    let limit = current.saturating_mul(RESIZE_FACTOR).min(max);
    let request = in_proportion(sizes.spec_request, current, limit);
    let extra = limit.saturating_sub(sizes.spec_limit);
    if let Some(room) = room
        && extra > room
    {
        return stop(format!(
            "its queue has {} free, {} short of growing it to {}",
            bytes_quantity(room),
            bytes_quantity(extra - room),
            bytes_quantity(limit)
        ));
    }
    Pressure::Resize {
        request,
        limit,
        extra,
    }
}

fn stop(why: String) -> Pressure {
    Pressure::Stop { why: Some(why) }
}

/// The sizes of a pod's worker container, read from its spec, status and annotations.
pub fn sizes_of(pod: &Pod, container: &str) -> Sizes {
    let memory = |map| memory_of(map).map(|(_, bytes)| bytes);
    let spec = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == container))
        .and_then(|c| c.resources.as_ref());
    let status = pod.status.as_ref();
    let applied = container_status(pod, container).and_then(|c| c.resources.as_ref());
    let annotations = pod.metadata.annotations.as_ref();
    let asked = annotations.and_then(|a| {
        let bytes = a.get(RESIZE_TO_ANNOTATION)?.parse().ok()?;
        let at = a.get(RESIZE_AT_ANNOTATION)?.parse().ok()?;
        Some((bytes, at))
    });
    let pending = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|all| {
            all.iter()
                .find(|c| c.type_ == "PodResizePending" && c.status == "True")
        })
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        });
    let spec_limit = memory(spec.and_then(|r| r.limits.as_ref())).unwrap_or(0);
    Sizes {
        spec_limit,
        spec_request: memory(spec.and_then(|r| r.requests.as_ref())).unwrap_or(spec_limit),
        applied_limit: memory(applied.and_then(|r| r.limits.as_ref())),
        asked,
        pending,
    }
}

/// How many times the guard grew a pod, from its annotation.
pub fn resizes_of(annotations: &BTreeMap<String, String>) -> u32 {
    annotations
        .get(RESIZES_ANNOTATION)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    /// Over the threshold, short of the last line.
    const HOT: Use = Use {
        fraction: 0.87,
        last_line: 0.92,
    };

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn sizes(limit: u64) -> Sizes {
        Sizes {
            spec_limit: limit,
            spec_request: limit / 2,
            applied_limit: Some(limit),
            ..Default::default()
        }
    }

    #[test]
    fn a_worker_grows_to_twice_its_limit_with_the_request_in_proportion() {
        let pressure = on_pressure(&sizes(96 * MI), Some(256 * MI), None, now(), HOT);
        assert_eq!(
            pressure,
            Pressure::Resize {
                request: 96 * MI,
                limit: 192 * MI,
                extra: 96 * MI
            }
        );
        let capped = on_pressure(&sizes(192 * MI), Some(256 * MI), None, now(), HOT);
        assert!(matches!(capped, Pressure::Resize { limit, .. } if limit == 256 * MI));
    }

    #[test]
    fn without_a_ceiling_or_at_it_the_worker_is_stopped() {
        assert_eq!(
            on_pressure(&sizes(96 * MI), None, None, now(), HOT),
            Pressure::Stop { why: None }
        );
        assert_eq!(
            on_pressure(&sizes(256 * MI), Some(256 * MI), None, now(), HOT),
            Pressure::Stop { why: None }
        );
    }

    #[test]
    fn a_queue_without_room_for_the_growth_stops_the_worker_and_says_so() {
        let pressure = on_pressure(&sizes(96 * MI), Some(256 * MI), Some(64 * MI), now(), HOT);
        let Pressure::Stop { why: Some(why) } = pressure else {
            panic!("{pressure:?}")
        };
        assert_eq!(
            why,
            "its queue has 64Mi free, 32Mi short of growing it to 192Mi"
        );
        let fits = on_pressure(&sizes(96 * MI), Some(256 * MI), Some(96 * MI), now(), HOT);
        assert!(matches!(fits, Pressure::Resize { .. }), "{fits:?}");
    }

    #[test]
    fn a_resize_on_its_way_is_waited_for_then_given_up() {
        let asked = Sizes {
            spec_limit: 192 * MI,
            asked: Some((192 * MI, now())),
            ..sizes(96 * MI)
        };
        let asked = Sizes {
            applied_limit: Some(96 * MI),
            ..asked
        };
        assert_eq!(
            on_pressure(
                &asked,
                Some(256 * MI),
                None,
                now() + Duration::from_secs(5),
                HOT
            ),
            Pressure::Wait
        );
        let deferred = Sizes {
            pending: Some(("Deferred".into(), "Node didn't have enough resource".into())),
            ..asked.clone()
        };
        let near_the_limit = Use {
            fraction: 0.93,
            ..HOT
        };
        let stop = on_pressure(&deferred, Some(256 * MI), None, now(), near_the_limit);
        assert!(
            matches!(&stop, Pressure::Stop { why: Some(why) } if why == "its resize to 192Mi is not applied yet (Deferred: Node didn't have enough resource) and it is at 93%"),
            "{stop:?}"
        );
        let late = on_pressure(&asked, Some(256 * MI), None, now() + RESIZE_TIMEOUT, HOT);
        assert!(
            matches!(&late, Pressure::Stop { why: Some(why) } if why.contains("did not apply its resize to 192Mi")),
            "{late:?}"
        );
        let infeasible = Sizes {
            pending: Some((
                "Infeasible".into(),
                "Node didn't have enough capacity".into(),
            )),
            ..asked.clone()
        };
        let stop = on_pressure(&infeasible, Some(256 * MI), None, now(), HOT);
        assert!(
            matches!(&stop, Pressure::Stop { why: Some(why) } if why.contains("cannot grow it to 192Mi: Node didn't")),
            "{stop:?}"
        );
    }

    #[test]
    fn an_applied_resize_lets_the_worker_grow_again_up_to_the_ceiling() {
        let applied = Sizes {
            asked: Some((192 * MI, now())),
            ..sizes(192 * MI)
        };
        let pressure = on_pressure(&applied, Some(512 * MI), None, now(), HOT);
        assert!(matches!(pressure, Pressure::Resize { limit, .. } if limit == 384 * MI));
    }

    #[test]
    fn sizes_are_read_from_spec_status_annotations_and_conditions() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "annotations": {
                RESIZE_TO_ANNOTATION: (192 * MI).to_string(),
                RESIZE_AT_ANNOTATION: "2027-01-15T08:00:00Z",
                RESIZES_ANNOTATION: "1",
            }},
            "spec": {"containers": [
                {"name": "sidecar", "image": "s"},
                {"name": "worker", "image": "w", "resources": {
                    "requests": {"memory": "128Mi"}, "limits": {"memory": "192Mi"}}}
            ]},
            "status": {
                "conditions": [{"type": "PodResizePending", "status": "True", "reason": "Deferred", "message": "wait"}],
                "containerStatuses": [{"name": "worker", "image": "w", "imageID": "", "ready": true,
                    "restartCount": 0, "resources": {"limits": {"memory": "96Mi"}}}]
            }
        }))
        .unwrap();
        let sizes = sizes_of(&pod, "worker");
        assert_eq!(sizes.spec_limit, 192 * MI);
        assert_eq!(sizes.spec_request, 128 * MI);
        assert_eq!(sizes.applied_limit, Some(96 * MI));
        assert_eq!(sizes.limit(), 96 * MI);
        assert_eq!(
            sizes.asked,
            Some((192 * MI, "2027-01-15T08:00:00Z".parse().unwrap()))
        );
        assert_eq!(sizes.pending, Some(("Deferred".into(), "wait".into())));
        assert_eq!(resizes_of(pod.metadata.annotations.as_ref().unwrap()), 1);
    }
}
