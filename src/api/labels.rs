//! Names, labels, annotations and finalizers that tie Jobs and pods to their run and batch:
//! the contract every layer reads, so it lives at the bottom.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{GuardAction, RecordRange};

pub const RUN: &str = "batchguard.dev/run";
pub const RUN_UID: &str = "batchguard.dev/run-uid";
pub const RANGE_START: &str = "batchguard.dev/range-start";
pub const RANGE_END: &str = "batchguard.dev/range-end";
pub const ATTEMPT: &str = "batchguard.dev/attempt";
/// On batch Jobs and pods of a queued run: the BatchQueue whose budget they use.
pub const QUEUE: &str = "batchguard.dev/queue";
/// Kueue's label naming the LocalQueue a Job is submitted to.
pub const KUEUE_QUEUE: &str = "kueue.x-k8s.io/queue-name";
/// Set by the Job controller on a Job's pods.
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "batchguard";

/// On batch Jobs' pod templates, so on their pods: the name of the worker container, which the
/// run's template may rename while older workers still run.
pub const WORKER_CONTAINER: &str = "batchguard.dev/worker-container";

/// On worker pods: the pod cannot vanish before its result is in the run's status.
pub const RESULT_FINALIZER: &str = "batchguard.dev/result";
/// On runs: a new value queues the failed ranges again (`kubectl batchguard retry --failed`).
pub const RETRY_FAILED: &str = "batchguard.dev/retry-failed";
/// On runs: deleting a run first releases its worker pods.
pub const CLEANUP_FINALIZER: &str = "batchguard.dev/cleanup";

/// Pod annotation recording the guard's action, so it is taken once and the planner knows a
/// stopped worker was not a failure.
pub const ACTION_ANNOTATION: &str = "batchguard.dev/guard-action";
/// Pod annotation with the percent of the limit measured when the guard acted.
pub const PERCENT_ANNOTATION: &str = "batchguard.dev/guard-percent";

/// The guard's action on a pod, written as its annotations (`ACTION_ANNOTATION`,
/// `PERCENT_ANNOTATION`) before it acts, so it is taken once and the planner knows a stopped
/// worker was not a failure.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuardMark {
    #[serde(rename = "batchguard.dev/guard-action")]
    pub action: GuardAction,
    /// Percent of the limit measured when the guard acted (0 when unreadable).
    #[serde(
        rename = "batchguard.dev/guard-percent",
        default,
        with = "percent_text"
    )]
    pub percent: u32,
}

impl GuardMark {
    /// The mark on a pod, if it carries one with a known action.
    pub fn read(annotations: &BTreeMap<String, String>) -> Option<Self> {
        // Only our two keys: other annotations never make the mark unreadable.
        let ours = annotations
            .iter()
            .filter(|(key, _)| *key == ACTION_ANNOTATION || *key == PERCENT_ANNOTATION)
            .map(|(key, value)| (key.as_str(), value.as_str()));
        let map = serde::de::value::MapDeserializer::<_, serde::de::value::Error>::new(ours);
        GuardMark::deserialize(map).ok()
    }
}

/// Annotations are strings: the percent is written and read as text.
mod percent_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(percent: &u32, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(percent)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(text.parse().unwrap_or(0))
    }
}

/// Selects every object batchguard manages.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY}={MANAGER}")
}

/// The JSON patch that removes `finalizer` from `finalizers`, and only it: it tests the entry
/// it removes, so a concurrent change of the list makes it fail instead of dropping another
/// finalizer. `None` when the finalizer is not there.
pub fn finalizer_removal(finalizers: &[String], finalizer: &str) -> Option<json_patch::Patch> {
    let index = finalizers.iter().position(|f| f == finalizer)?;
    let patch = serde_json::json!([
        {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": finalizer},
        {"op": "remove", "path": format!("/metadata/finalizers/{index}")},
    ]);
    Some(serde_json::from_value(patch).expect("a well-formed JSON patch"))
}

/// Labels of a batch Job and its pod.
pub fn batch_labels(
    run: &str,
    run_uid: &str,
    range: RecordRange,
    attempt: u32,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RUN.to_string(), truncate_label(run)),
        (RUN_UID.to_string(), run_uid.to_string()),
        (RANGE_START.to_string(), range.start.to_string()),
        (RANGE_END.to_string(), range.end.to_string()),
        (ATTEMPT.to_string(), attempt.to_string()),
        (MANAGED_BY.to_string(), MANAGER.to_string()),
    ])
}

/// Reads (range, attempt) back from labels.
pub fn batch_of(labels: &BTreeMap<String, String>) -> Option<(RecordRange, u32)> {
    let number = |key: &str| labels.get(key)?.parse::<u64>().ok();
    let (start, end) = (number(RANGE_START)?, number(RANGE_END)?);
    let attempt = u32::try_from(number(ATTEMPT)?).ok()?;
    (start < end).then(|| (RecordRange::new(start, end), attempt))
}

/// The Job name: a pure function of (run, range, attempt), so creating it twice is harmless.
/// Readable when it fits in 63 characters; the hash keeps truncated names distinct.
pub fn job_name(run: &str, run_uid: &str, range: RecordRange, attempt: u32) -> String {
    let key = format!("{run}/{run_uid}/{}/{}/{attempt}", range.start, range.end);
    let suffix = format!(
        "-{}-a{attempt}-{:06x}",
        range.start,
        fnv1a(&key) & 0xff_ffff
    );
    let room = 63 - suffix.len();
    let prefix: String = run.chars().take(room).collect();
    format!("{}{suffix}", prefix.trim_end_matches(['-', '.']))
}

fn truncate_label(value: &str) -> String {
    value
        .chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.', '_'])
        .to_string()
}

/// 64-bit FNV-1a: stable across builds, unlike std's hasher, because names must be.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_name_is_stable_and_distinct_per_attempt() {
        let range = RecordRange::new(5000, 10000);
        let a1 = job_name("payroll", "uid-1", range, 1);
        assert_eq!(a1, job_name("payroll", "uid-1", range, 1));
        assert_ne!(a1, job_name("payroll", "uid-1", range, 2));
        assert_ne!(a1, job_name("payroll", "uid-2", range, 1));
        assert!(a1.starts_with("payroll-5000-a1-"), "{a1}");
    }

    #[test]
    fn long_run_names_are_truncated_to_a_valid_name() {
        let run = "a".repeat(80);
        let name = job_name(&run, "uid", RecordRange::new(123_456_789, 123_456_790), 12);
        assert!(name.len() <= 63, "{name}");
        assert!(name.chars().next().unwrap().is_ascii_alphanumeric());
    }

    #[test]
    fn labels_round_trip() {
        let labels = batch_labels("run", "uid", RecordRange::new(10, 20), 3);
        assert_eq!(batch_of(&labels), Some((RecordRange::new(10, 20), 3)));
        assert_eq!(labels[MANAGED_BY], "batchguard");
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_guard_mark_is_written_and_read_as_two_annotations() {
        let mark = GuardMark {
            action: GuardAction::Restart,
            percent: 91,
        };
        assert_eq!(
            serde_json::to_value(mark).unwrap(),
            serde_json::json!({ACTION_ANNOTATION: "Restart", PERCENT_ANNOTATION: "91"})
        );
        let written = annotations(&[
            (ACTION_ANNOTATION, "Restart"),
            (PERCENT_ANNOTATION, "91"),
            ("team", "payroll"),
        ]);
        assert_eq!(GuardMark::read(&written), Some(mark));
    }

    #[test]
    fn a_mark_needs_a_known_action_but_not_a_readable_percent() {
        let drain = annotations(&[(ACTION_ANNOTATION, "Drain"), (PERCENT_ANNOTATION, "x")]);
        assert_eq!(
            GuardMark::read(&drain),
            Some(GuardMark {
                action: GuardAction::Drain,
                percent: 0
            })
        );
        let bare = annotations(&[(ACTION_ANNOTATION, "Observe")]);
        assert_eq!(GuardMark::read(&bare).map(|m| m.percent), Some(0));
        assert_eq!(
            GuardMark::read(&annotations(&[(ACTION_ANNOTATION, "Pause")])),
            None
        );
        assert_eq!(
            GuardMark::read(&annotations(&[(PERCENT_ANNOTATION, "90")])),
            None
        );
    }

    #[test]
    fn fnv_matches_the_reference_vector() {
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn apply(finalizers: &[&str], finalizer: &str) -> Option<Vec<String>> {
        let patch = finalizer_removal(&list(finalizers), finalizer)?;
        let mut object = serde_json::json!({"metadata": {"finalizers": finalizers}});
        json_patch::patch(&mut object, &patch).expect("the patch applies");
        Some(serde_json::from_value(object["metadata"]["finalizers"].clone()).unwrap())
    }

    #[test]
    fn removal_drops_only_our_finalizer() {
        assert_eq!(
            apply(
                &["example.com/keep", RESULT_FINALIZER, "other.io/x"],
                RESULT_FINALIZER
            ),
            Some(list(&["example.com/keep", "other.io/x"]))
        );
        assert_eq!(apply(&[CLEANUP_FINALIZER], CLEANUP_FINALIZER), Some(vec![]));
    }

    #[test]
    fn removal_is_none_without_our_finalizer() {
        assert_eq!(apply(&["example.com/keep"], RESULT_FINALIZER), None);
        assert_eq!(apply(&[], CLEANUP_FINALIZER), None);
    }

    #[test]
    fn removal_fails_when_the_list_moved() {
        let patch = finalizer_removal(&list(&["a/b", RESULT_FINALIZER]), RESULT_FINALIZER).unwrap();
        let mut moved = serde_json::json!({"metadata": {"finalizers": [RESULT_FINALIZER]}});
        assert!(json_patch::patch(&mut moved, &patch).is_err());
    }
}
