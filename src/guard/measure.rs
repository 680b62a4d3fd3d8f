//! One memory query per poll for every guarded run (pure): the workers it asks about, grouped
//! across runs, and what each run reads of the answer. Every run is measured at every poll
//! however many are live, and Prometheus gets one query per poll, not one per run.

use std::collections::BTreeMap;

use crate::prometheus::promql::{PodKey, WorkerGroup};

/// A running worker of a guarded run, as a poll measures it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    /// Its own worker container: the run's template may have renamed it since.
    pub container: &'a str,
    /// Bytes of its own memory limit; a worker without one cannot be measured.
    pub limit: Option<u64>,
}

/// The poll's answer: memory bytes by namespace and pod, or why the query failed.
pub type Answer = Result<BTreeMap<PodKey, f64>, String>;

/// The query's groups over the workers of every run: those with a limit, by namespace and
/// worker container.
pub fn groups<'a>(runs: impl IntoIterator<Item = &'a [Measured<'a>]>) -> Vec<WorkerGroup<'a>> {
    WorkerGroup::group(
        runs.into_iter()
            .flatten()
            .filter(|w| w.limit.is_some())
            .map(|w| (w.namespace, w.pod, w.container)),
    )
}

/// What one run reads of the answer: each of its workers' memory as a fraction of its own
/// limit, by pod name. A failed query blinds the run only if it had a worker to measure.
pub fn share(workers: &[Measured], answer: &Answer) -> Result<BTreeMap<String, f64>, String> {
    let measurable = || workers.iter().filter_map(|w| Some((w, w.limit?)));
    match answer {
        Err(why) if measurable().next().is_some() => Err(why.clone()),
        Err(_) => Ok(BTreeMap::new()),
        Ok(bytes) => Ok(measurable()
            .filter_map(|(w, limit)| {
                let bytes = bytes.get(&PodKey::new(w.namespace, w.pod))?;
                Some((w.pod.to_string(), bytes / limit as f64))
            })
            .collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    fn worker<'a>(namespace: &'a str, pod: &'a str, container: &'a str) -> Measured<'a> {
        Measured {
            namespace,
            pod,
            container,
            limit: Some(100 * MI),
        }
    }

    fn answer(values: &[(&str, &str, u64)]) -> Answer {
        Ok(values
            .iter()
            .map(|(ns, pod, bytes)| (PodKey::new(ns, pod), *bytes as f64))
            .collect())
    }

    #[test]
    fn runs_in_one_namespace_share_a_group_and_renamed_workers_get_their_own() {
        let a = [worker("ns", "a-1", "worker"), worker("ns", "a-2", "main")];
        let b = [worker("ns", "b-1", "worker")];
        let c = [worker("other", "c-1", "worker")];
        assert_eq!(
            groups([&a[..], &b[..], &c[..]]),
            vec![
                WorkerGroup {
                    namespace: "ns",
                    container: "worker",
                    pods: vec!["a-1", "b-1"],
                },
                WorkerGroup {
                    namespace: "ns",
                    container: "main",
                    pods: vec!["a-2"],
                },
                WorkerGroup {
                    namespace: "other",
                    container: "worker",
                    pods: vec!["c-1"],
                },
            ]
        );
    }

    #[test]
    fn a_worker_without_a_limit_is_not_asked_about() {
        let run = [Measured {
            limit: None,
            ..worker("ns", "a-1", "worker")
        }];
        assert!(groups([&run[..]]).is_empty());
        assert_eq!(share(&run, &answer(&[])), Ok(BTreeMap::new()));
    }

    #[test]
    fn each_run_reads_only_its_own_pods_against_their_own_limits() {
        let a = [
            worker("ns", "a-1", "worker"),
            Measured {
                limit: Some(200 * MI),
                ..worker("ns", "a-2", "worker")
            },
        ];
        let b = [worker("ns", "b-1", "worker")];
        let all = answer(&[
            ("ns", "a-1", 50 * MI),
            ("ns", "a-2", 50 * MI),
            ("ns", "b-1", 90 * MI),
        ]);
        assert_eq!(
            share(&a, &all),
            Ok(BTreeMap::from([("a-1".into(), 0.5), ("a-2".into(), 0.25)]))
        );
        assert_eq!(share(&b, &all), Ok(BTreeMap::from([("b-1".into(), 0.9)])));
    }

    #[test]
    fn a_pod_name_in_another_namespace_is_another_pod() {
        let run = [worker("mine", "w-1", "worker")];
        let all = answer(&[("theirs", "w-1", 99 * MI)]);
        // Unseen, not read as the other namespace's value.
        assert_eq!(share(&run, &all), Ok(BTreeMap::new()));
        let all = answer(&[("theirs", "w-1", 99 * MI), ("mine", "w-1", 10 * MI)]);
        assert_eq!(share(&run, &all), Ok(BTreeMap::from([("w-1".into(), 0.1)])));
    }

    #[test]
    fn a_failed_query_blinds_every_run_it_measured_and_no_other() {
        let failed: Answer = Err("Prometheus query failed: timeout".into());
        let measured = [worker("ns", "a-1", "worker")];
        assert_eq!(
            share(&measured, &failed),
            Err("Prometheus query failed: timeout".into())
        );
        let unmeasurable = [Measured {
            limit: None,
            ..worker("ns", "b-1", "worker")
        }];
        assert_eq!(share(&unmeasurable, &failed), Ok(BTreeMap::new()));
    }
}
