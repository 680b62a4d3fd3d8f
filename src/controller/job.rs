//! Building a batch Job from the run's spec (pure). The worker container gets the memory
//! request and limit from the spec and the batch's environment; the pod gets the result
//! finalizer and, unless the template says otherwise, restricted-PSS security defaults.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, PodSecurityContext, ResourceRequirements, SeccompProfile,
    SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::api::labels::{
    KUEUE_QUEUE, QUEUE, RESULT_FINALIZER, WORKER_CONTAINER, batch_labels, job_name,
};
use crate::api::worker_pod::{sdk_threshold, worker_container, worker_index};
use crate::api::{BatchRun, GuardAction, bytes_quantity, in_proportion, memory_bytes};
use crate::plan::Launch;
use crate::worker::env;

/// Largest item list passed to one worker through its environment.
pub const MAX_ITEMS_ENV_BYTES: usize = 64 * 1024;

/// Why a Job cannot be built; reported on the run as an invalid spec.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("spec.template.spec.containers must hold at least one container")]
    NoContainer,
    #[error("spec.resources.memory.limit: {0}")]
    Limit(crate::api::BadQuantity),
    #[error(
        "items {0} take {1} bytes, more than the {MAX_ITEMS_ENV_BYTES} one worker's environment may hold: lower spec.input.batchSize"
    )]
    ItemsTooLarge(String, usize),
    #[error("the run has no uid yet")]
    NoUid,
}

/// Checks that every batch the run may cut fits a worker's environment: any `batch_size`
/// consecutive items (adaptive sizing cuts off the grid, never larger), so that no later
/// batch is found unlaunchable mid-run. Returns the first window that does not fit.
pub fn check_items_fit(items: &[String], batch_size: u64) -> Result<(), JobError> {
    let window = (batch_size.max(1) as usize).min(items.len().max(1));
    // The JSON array of items[i..i+window]: brackets, commas and each item's encoding.
    let sizes: Vec<usize> = items
        .iter()
        .map(|item| serde_json::to_string(item).map_or(0, |json| json.len()))
        .collect();
    let mut bytes: usize = sizes.iter().take(window).sum();
    for start in 0..=items.len().saturating_sub(window) {
        if start > 0 {
            bytes = bytes - sizes[start - 1] + sizes[start + window - 1];
        }
        let total = bytes + 2 + window.saturating_sub(1);
        if total > MAX_ITEMS_ENV_BYTES {
            let range = crate::api::RecordRange::new(start as u64, (start + window) as u64);
            return Err(JobError::ItemsTooLarge(range.to_string(), total));
        }
    }
    Ok(())
}

pub fn build_job(run: &BatchRun, launch: &Launch) -> Result<Job, JobError> {
    let name = run.name_any();
    let uid = run.uid().ok_or(JobError::NoUid)?;
    let spec = &run.spec;
    let mut labels = batch_labels(&name, &uid, launch.range, launch.attempt);
    if let Some(queue) = &spec.queue {
        labels.insert(QUEUE.into(), queue.clone());
    }
    let (request, limit, limit_bytes) = worker_memory(run, launch.memory_limit)?;

    let mut template = spec.template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(Default::default)
        .extend(labels.clone());
    // The guard and the observer read the worker's name back from the pod: the run's template
    // may rename it while this Job's pod still runs.
    let worker_name = worker_container(run);
    if !worker_name.is_empty() {
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(WORKER_CONTAINER.into(), worker_name);
    }
    let finalizers = meta.finalizers.get_or_insert_with(Default::default);
    if !finalizers.iter().any(|f| f == RESULT_FINALIZER) {
        finalizers.push(RESULT_FINALIZER.to_string());
    }
    let pod = template.spec.as_mut().ok_or(JobError::NoContainer)?;
    let worker = worker_index(pod).ok_or(JobError::NoContainer)?;
    pod.restart_policy = Some("Never".into());
    pod.automount_service_account_token.get_or_insert(false);
    restrict_pod(pod.security_context.get_or_insert_with(Default::default));
    pod.containers
        .iter_mut()
        .chain(pod.init_containers.iter_mut().flatten())
        .for_each(restrict);

    let mut environment = vec![
        (env::RUN, name.clone()),
        (env::RANGE_START, launch.range.start.to_string()),
        (env::RANGE_END, launch.range.end.to_string()),
        (env::ATTEMPT, launch.attempt.to_string()),
        (env::MEMORY_LIMIT_BYTES, limit_bytes.to_string()),
    ];
    // The SDKs' in-process guard acts at the run's threshold; a run that only observes gets none.
    if spec.memory_guard.action != GuardAction::Observe {
        let threshold = sdk_threshold(spec).to_string();
        environment.push((env::MEMORY_THRESHOLD_PERCENT, threshold));
    }
    if let Some(items) = &spec.input.items {
        let slice = items
            .get(launch.range.start as usize..(launch.range.end as usize).min(items.len()))
            .unwrap_or_default();
        let json = serde_json::to_string(slice).unwrap_or_default();
        if json.len() > MAX_ITEMS_ENV_BYTES {
            return Err(JobError::ItemsTooLarge(
                launch.range.to_string(),
                json.len(),
            ));
        }
        environment.push((env::ITEMS, json));
    }
    let container = &mut pod.containers[worker];
    set_memory(container, &request, &limit);
    let vars = container.env.get_or_insert_with(Default::default);
    vars.retain(|v| !environment.iter().any(|(k, _)| *k == v.name));
    vars.extend(environment.into_iter().map(|(k, v)| EnvVar {
        name: k.into(),
        value: Some(v),
        ..Default::default()
    }));

    // Kueue admits a suspended Job carrying its queue label by unsuspending it.
    let kueue = spec.kueue.as_ref().map(|k| k.queue_name.clone());
    let mut job_labels = labels;
    if let Some(queue) = &kueue {
        job_labels.insert(KUEUE_QUEUE.into(), queue.clone());
    }
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name(&name, &uid, launch.range, launch.attempt)),
            namespace: run.namespace(),
            labels: Some(job_labels),
            owner_references: run.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            completions: Some(1),
            parallelism: Some(1),
            pod_replacement_policy: Some("Failed".into()),
            // The operator removes settled Jobs after their retention; this is the backstop
            // for when it cannot (long enough for a failed attempt's logs).
            ttl_seconds_after_finished: Some(
                (spec.retention.succeeded_seconds).max(spec.retention.failed_seconds),
            ),
            suspend: kueue.is_some().then_some(true),
            template,
            ..Default::default()
        }),
        status: None,
    })
}

/// The worker's memory request and limit (quantities) and the limit in bytes: the spec's, or,
/// for a batch retried with more memory, `grown` bytes of limit and the request scaled with it.
fn worker_memory(run: &BatchRun, grown: Option<u64>) -> Result<(String, String, u64), JobError> {
    let memory = &run.spec.resources.memory;
    let limit_bytes = memory_bytes(&memory.limit).map_err(JobError::Limit)?;
    let Some(grown) = grown.filter(|g| *g != limit_bytes) else {
        return Ok((memory.request.clone(), memory.limit.clone(), limit_bytes));
    };
    let request_bytes = memory_bytes(&memory.request).unwrap_or(limit_bytes);
    let scaled = in_proportion(request_bytes, limit_bytes, grown);
    Ok((bytes_quantity(scaled), bytes_quantity(grown), grown))
}

fn set_memory(container: &mut Container, request: &str, limit: &str) {
    let resources = container
        .resources
        .get_or_insert_with(ResourceRequirements::default);
    let set = |map: &mut Option<BTreeMap<String, Quantity>>, value: &str| {
        map.get_or_insert_with(Default::default)
            .insert("memory".into(), Quantity(value.to_string()));
    };
    set(&mut resources.requests, request);
    set(&mut resources.limits, limit);
}

/// Restricted Pod Security Standard defaults, field by field: what the template sets wins,
/// what it leaves out is filled in (a template that sets only `fsGroup` is still restricted).
fn restrict_pod(context: &mut PodSecurityContext) {
    context.run_as_non_root.get_or_insert(true);
    context
        .seccomp_profile
        .get_or_insert_with(|| SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        });
}

/// The container half of the restricted defaults, field by field as for the pod.
fn restrict(container: &mut Container) {
    let context = container
        .security_context
        .get_or_insert_with(SecurityContext::default);
    context.allow_privilege_escalation.get_or_insert(false);
    context.capabilities.get_or_insert_with(|| Capabilities {
        drop: Some(vec!["ALL".into()]),
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        BatchRunSpec, InputSpec, MemoryResources, RecordRange, RecordRangeSpec, WorkerResources,
    };
    use k8s_openapi::api::core::v1::PodTemplateSpec;

    fn run(items: Option<Vec<String>>) -> BatchRun {
        let template: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"annotations": {"team": "payroll"}},
            "spec": {"containers": [
                {"name": "sidecar", "image": "busybox"},
                {"name": "worker", "image": "acme/payroll:1.4", "env": [{"name": "BATCHGUARD_ATTEMPT", "value": "stale"}],
                 "resources": {"requests": {"cpu": "1"}}}
            ]}
        }))
        .unwrap();
        let mut run = BatchRun::new(
            "payroll",
            BatchRunSpec {
                input: InputSpec {
                    range: items
                        .is_none()
                        .then_some(RecordRangeSpec { start: 0, end: 100 }),
                    items,
                    batch_size: 10,
                },
                parallelism: 3,
                template,
                resources: WorkerResources {
                    memory: MemoryResources {
                        request: "1Gi".into(),
                        limit: "2Gi".into(),
                        max: None,
                    },
                },
                memory_guard: Default::default(),
                retry: Default::default(),
                retention: Default::default(),
                suspend: false,
                queue: None,
                kueue: None,
                start_timeout_seconds: 120,
            },
        );
        run.metadata.namespace = Some("ns".into());
        run.metadata.uid = Some("uid-1".into());
        run
    }

    fn launch() -> Launch {
        Launch {
            range: RecordRange::new(10, 20),
            attempt: 2,
            memory_limit: None,
        }
    }

    fn env_of(job: &Job) -> BTreeMap<String, String> {
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let worker = &pod.containers[1];
        worker
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn worker_gets_memory_and_batch_environment() {
        let job = build_job(&run(None), &launch()).unwrap();
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let resources = pod.containers[1].resources.as_ref().unwrap();
        assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "2Gi");
        assert_eq!(resources.requests.as_ref().unwrap()["memory"].0, "1Gi");
        assert_eq!(
            resources.requests.as_ref().unwrap()["cpu"].0,
            "1",
            "other resources are kept"
        );
        assert!(
            pod.containers[0].resources.is_none(),
            "only the worker container is sized"
        );
        let env = env_of(&job);
        assert_eq!(env["BATCHGUARD_RANGE_START"], "10");
        assert_eq!(env["BATCHGUARD_RANGE_END"], "20");
        assert_eq!(env["BATCHGUARD_ATTEMPT"], "2");
        assert_eq!(
            env["BATCHGUARD_MEMORY_LIMIT_BYTES"],
            (2u64 << 30).to_string()
        );
        assert!(!env.contains_key("BATCHGUARD_ITEMS"));
        assert_eq!(env["BATCHGUARD_MEMORY_THRESHOLD_PERCENT"], "85");
    }

    #[test]
    fn a_batch_retried_with_more_memory_gets_it_request_and_limit_alike() {
        let grown = Launch {
            memory_limit: Some(4 << 30),
            ..launch()
        };
        let job = build_job(&run(None), &grown).unwrap();
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let resources = pod.containers[1].resources.as_ref().unwrap();
        assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "4Gi");
        assert_eq!(resources.requests.as_ref().unwrap()["memory"].0, "2Gi");
        assert_eq!(
            env_of(&job)["BATCHGUARD_MEMORY_LIMIT_BYTES"],
            (4u64 << 30).to_string()
        );
    }

    #[test]
    fn with_a_ceiling_the_sdk_guard_stops_a_worker_only_after_the_operator_could_grow_it() {
        let mut run = run(None);
        assert_eq!(
            env_of(&build_job(&run, &launch()).unwrap())["BATCHGUARD_MEMORY_THRESHOLD_PERCENT"],
            "85"
        );
        run.spec.resources.memory.max = Some("8Gi".into());
        assert_eq!(
            env_of(&build_job(&run, &launch()).unwrap())["BATCHGUARD_MEMORY_THRESHOLD_PERCENT"],
            "92"
        );
    }

    #[test]
    fn a_run_that_only_observes_gives_the_sdk_guard_no_threshold() {
        let mut run = run(None);
        run.spec.memory_guard.action = GuardAction::Observe;
        let job = build_job(&run, &launch()).unwrap();
        assert!(!env_of(&job).contains_key("BATCHGUARD_MEMORY_THRESHOLD_PERCENT"));
    }

    #[test]
    fn job_is_owned_labelled_and_never_retried_by_kubernetes() {
        let job = build_job(&run(None), &launch()).unwrap();
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.completions, Some(1));
        assert_eq!(spec.pod_replacement_policy.as_deref(), Some("Failed"));
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("BatchRun", Some(true))
        );
        let pod_meta = spec.template.metadata.as_ref().unwrap();
        assert_eq!(
            pod_meta.labels.as_ref().unwrap()["batchguard.dev/range-start"],
            "10"
        );
        assert_eq!(pod_meta.annotations.as_ref().unwrap()["team"], "payroll");
        assert_eq!(
            pod_meta.annotations.as_ref().unwrap()[WORKER_CONTAINER],
            "worker",
            "the pod says which container is the worker"
        );
        assert_eq!(
            pod_meta.finalizers.as_deref(),
            Some(&["batchguard.dev/result".to_string()][..])
        );
        assert_eq!(
            job.metadata.name,
            Some(job_name("payroll", "uid-1", RecordRange::new(10, 20), 2))
        );
    }

    #[test]
    fn queued_runs_label_jobs_and_pods_with_their_queue() {
        let mut run = run(None);
        run.spec.queue = Some("month-end".into());
        let job = build_job(&run, &launch()).unwrap();
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(job.labels()[QUEUE], "month-end");
        let pod_labels = spec.template.metadata.as_ref().unwrap().labels.as_ref();
        assert_eq!(pod_labels.unwrap()[QUEUE], "month-end");
        assert_eq!(spec.suspend, None, "batchguard admits it: created running");
        assert!(!job.labels().contains_key(KUEUE_QUEUE));
    }

    #[test]
    fn kueue_hand_off_creates_suspended_labelled_jobs() {
        let mut run = run(None);
        run.spec.kueue = Some(crate::api::KueueHandOff {
            queue_name: "team-a".into(),
        });
        let job = build_job(&run, &launch()).unwrap();
        assert_eq!(job.spec.as_ref().unwrap().suspend, Some(true));
        assert_eq!(job.labels()[KUEUE_QUEUE], "team-a");
        assert!(!job.labels().contains_key(QUEUE));
    }

    #[test]
    fn pods_follow_the_restricted_standard_by_default() {
        let job = build_job(&run(None), &launch()).unwrap();
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        for c in &pod.containers {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_string()][..])
            );
        }
    }

    #[test]
    fn user_security_settings_win() {
        let mut r = run(None);
        let pod = r.spec.template.spec.as_mut().unwrap();
        pod.automount_service_account_token = Some(true);
        pod.containers[1].security_context = Some(SecurityContext {
            privileged: Some(true),
            ..Default::default()
        });
        let job = build_job(&r, &launch()).unwrap();
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.automount_service_account_token, Some(true));
        assert_eq!(
            pod.containers[1]
                .security_context
                .as_ref()
                .unwrap()
                .privileged,
            Some(true)
        );
    }

    #[test]
    fn restricted_defaults_merge_field_by_field_with_the_template() {
        let mut r = run(None);
        let pod = r.spec.template.spec.as_mut().unwrap();
        pod.security_context = Some(PodSecurityContext {
            fs_group: Some(2000),
            ..Default::default()
        });
        pod.containers[0].security_context = Some(SecurityContext {
            read_only_root_filesystem: Some(true),
            ..Default::default()
        });
        pod.containers[1].security_context = Some(SecurityContext {
            allow_privilege_escalation: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_BIND_SERVICE".into()]),
                ..Default::default()
            }),
            ..Default::default()
        });
        let job = build_job(&r, &launch()).unwrap();
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.fs_group, Some(2000), "the template's field is kept");
        assert_eq!(psc.run_as_non_root, Some(true), "and the defaults added");
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let sidecar = pod.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sidecar.read_only_root_filesystem, Some(true));
        assert_eq!(sidecar.allow_privilege_escalation, Some(false));
        let dropped = sidecar.capabilities.as_ref().unwrap().drop.as_deref();
        assert_eq!(dropped, Some(&["ALL".to_string()][..]));
        let worker = pod.containers[1].security_context.as_ref().unwrap();
        assert_eq!(
            worker.allow_privilege_escalation,
            Some(true),
            "set by the template"
        );
        let capabilities = worker.capabilities.as_ref().unwrap();
        assert_eq!(
            capabilities.add.as_deref(),
            Some(&["NET_BIND_SERVICE".to_string()][..])
        );
        assert_eq!(
            capabilities.drop, None,
            "the template chose its capabilities"
        );
    }

    #[test]
    fn items_that_fit_a_worker_in_every_window_pass() {
        let items: Vec<String> = (0..1000).map(|i| format!("client-{i}")).collect();
        assert!(check_items_fit(&items, 100).is_ok());
        assert!(
            check_items_fit(&items, 5000).is_ok(),
            "a batch larger than the list"
        );
    }

    #[test]
    fn a_later_window_too_large_for_a_worker_is_found_before_any_launch() {
        let mut items: Vec<String> = (0..30).map(|i| format!("client-{i}")).collect();
        // Items 20 and 21 are large: batches 0-9 and 10-19 fit, 20-29 does not.
        items[20] = "x".repeat(40_000);
        items[21] = "y".repeat(40_000);
        let err = check_items_fit(&items, 10).unwrap_err();
        assert!(
            matches!(err, JobError::ItemsTooLarge(ref range, bytes) if range == "12-21" && bytes > MAX_ITEMS_ENV_BYTES),
            "{err}"
        );
        assert!(err.to_string().contains("lower spec.input.batchSize"));
        assert!(check_items_fit(&items, 1).is_ok(), "one item a batch fits");
    }

    #[test]
    fn items_mode_passes_the_batch_items() {
        let items: Vec<String> = (0..30).map(|i| format!("client-{i}")).collect();
        let job = build_job(&run(Some(items)), &launch()).unwrap();
        let passed: Vec<String> = serde_json::from_str(&env_of(&job)["BATCHGUARD_ITEMS"]).unwrap();
        assert_eq!(passed.first().map(String::as_str), Some("client-10"));
        assert_eq!(passed.len(), 10);
    }
}
