//! The executor against a mock apiserver (tower-test): the calls it makes, in their order.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tower::Layer;

use super::events::failure_event;
use super::executor::execute;
use super::{Context, Error};
use crate::api::labels::RESULT_FINALIZER;
use crate::api::{BatchRun, BatchRunStatus, RecordRange};
use crate::metrics::{Metrics, RequestLabels};
use crate::plan::{Launch, Plan};

/// One request the mock apiserver received.
#[derive(Debug, Clone)]
struct Call {
    method: Method,
    path: String,
    body: Value,
}

impl Call {
    fn is(&self, method: Method, path: &str) -> bool {
        self.method == method && self.path == path
    }
}

const STATUS: &str = "/apis/batchguard.dev/v1alpha1/namespaces/ns/batchruns/payroll/status";
const POD: &str = "/api/v1/namespaces/ns/pods/payroll-w-1";
const JOBS: &str = "/apis/batch/v1/namespaces/ns/jobs";

/// How the mock apiserver answers the run's status write.
#[derive(Clone, Copy)]
enum StatusWrite {
    Accepted,
    Conflict,
    Unavailable,
}

/// A mock apiserver that records every request and answers it: the status write as told,
/// every other write by echoing the object back.
fn apiserver(
    status_write: StatusWrite,
) -> (Client, Arc<Metrics>, tokio::task::JoinHandle<Vec<Call>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let metrics = Arc::new(Metrics::default());
    // The client as main builds it: requests are counted by the layer.
    let client = Client::new(metrics.api.layer().layer(service), "default");
    let served = tokio::spawn(async move {
        let mut calls = vec![];
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.expect("a request body");
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let call = Call {
                method: parts.method,
                path: parts.uri.path().to_string(),
                body,
            };
            let (code, answer) = match status_write {
                StatusWrite::Conflict if call.is(Method::PATCH, STATUS) => failure(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "the object has been modified",
                ),
                StatusWrite::Unavailable if call.is(Method::PATCH, STATUS) => failure(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "etcd is down",
                ),
                _ if call.is(Method::PATCH, STATUS) => {
                    (StatusCode::OK, serde_json::to_value(run()).unwrap())
                }
                _ if call.is(Method::PATCH, POD) => {
                    (StatusCode::OK, serde_json::to_value(pod()).unwrap())
                }
                _ => (StatusCode::CREATED, call.body.clone()),
            };
            let response = Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            respond.send_response(response);
            calls.push(call);
        }
        calls
    });
    (client, metrics, served)
}

/// An apiserver's refusal: a `Status` with its code.
fn failure(code: StatusCode, reason: &str, message: &str) -> (StatusCode, Value) {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "reason": reason, "message": message, "code": code.as_u16(),
    });
    (code, status)
}

/// The run as a user writes it, with the version the plan was made from.
fn run() -> BatchRun {
    serde_json::from_value(json!({
        "apiVersion": "batchguard.dev/v1alpha1",
        "kind": "BatchRun",
        "metadata": {"name": "payroll", "namespace": "ns", "uid": "uid-1", "resourceVersion": "41"},
        "spec": {
            "input": {"range": {"start": 0, "end": 100}, "batchSize": 10},
            "parallelism": 3,
            "template": {"spec": {"containers": [{"name": "worker", "image": "acme/payroll:1.4"}]}},
            "resources": {"memory": {"request": "1Gi", "limit": "2Gi"}},
        },
    }))
    .expect("a valid BatchRun")
}

/// A worker pod whose result is counted and that still holds the result finalizer.
fn pod() -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": "payroll-w-1", "namespace": "ns",
            "finalizers": ["example.com/other", RESULT_FINALIZER],
        }
    }))
    .unwrap()
}

/// A plan that writes the status, releases one pod's result and launches one batch.
fn plan() -> Plan {
    Plan {
        status: Some(BatchRunStatus::default()),
        release: vec!["payroll-w-1".into()],
        remove_jobs: vec![],
        stop: vec![],
        launch: vec![Launch {
            range: RecordRange::new(10, 20),
            attempt: 1,
            memory_limit: None,
        }],
        notices: vec![],
        requeue_after: None,
    }
}

fn context(client: Client, metrics: Arc<Metrics>, pods: Store<Pod>) -> Context {
    let reporter = Reporter {
        controller: "batchguard".into(),
        instance: None,
    };
    Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        metrics,
        jobs: reflector::store::<Job>().0,
        pods,
        caches_ready: AtomicBool::new(true),
        guard: None,
        queue_store: reflector::store().0,
        runs: reflector::store().0,
        queues: Default::default(),
        setbacks: Default::default(),
        last_writes: Default::default(),
        expectations: Default::default(),
    }
}

/// Runs the executor on `plan()` against the mock apiserver; returns what it returned and
/// the calls it made.
async fn execute_plan(
    status_write: StatusWrite,
) -> (Result<Action, Error>, Vec<Call>, Arc<Metrics>) {
    let (client, metrics, served) = apiserver(status_write);
    let (pods, mut writer) = reflector::store::<Pod>();
    writer.apply_watcher_event(&watcher::Event::Apply(pod()));
    let ctx = context(client, metrics.clone(), pods);
    let outcome = execute(&run(), plan(), &ctx, None).await;
    // With the last client gone, the mock apiserver hears no more and hands its record over.
    drop(ctx);
    (outcome, served.await.expect("the mock apiserver"), metrics)
}

fn order(calls: &[Call]) -> Vec<(Method, &str)> {
    calls
        .iter()
        .map(|c| (c.method.clone(), c.path.as_str()))
        .collect()
}

#[tokio::test]
async fn status_is_written_before_results_are_released_and_before_jobs_launch() {
    let (outcome, calls, metrics) = execute_plan(StatusWrite::Accepted).await;
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(
        order(&calls),
        [
            (Method::PATCH, STATUS),
            (Method::PATCH, POD),
            (Method::POST, JOBS),
        ],
        "the status holds the results before any pod lets its result go or a new Job starts"
    );
    // The status write is conditional on the resourceVersion the plan was made from.
    assert_eq!(calls[0].body["metadata"]["resourceVersion"], "41");
    // Only the result finalizer goes, tested in place first.
    assert_eq!(
        calls[1].body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/1", "value": RESULT_FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/1"},
        ])
    );
    let job: Job = serde_json::from_value(calls[2].body.clone()).unwrap();
    assert!(job.name_any().starts_with("payroll"), "{}", job.name_any());
    let counted = |verb: &str, resource: &str| {
        metrics
            .api
            .requests
            .get_or_create(&RequestLabels {
                verb: verb.into(),
                resource: resource.into(),
            })
            .get()
    };
    assert_eq!(
        [
            counted("patch", "batchruns/status"),
            counted("patch", "pods"),
            counted("create", "jobs")
        ],
        [1, 1, 1],
        "the client's layer counts each request"
    );
}

#[tokio::test]
async fn a_conflicting_status_write_releases_nothing_and_launches_nothing() {
    let (outcome, calls, _) = execute_plan(StatusWrite::Conflict).await;
    assert_eq!(
        order(&calls),
        [(Method::PATCH, STATUS)],
        "a plan made from an old read is dropped whole"
    );
    // Planned again soon, from a fresh read: not an error.
    assert!(outcome.is_ok(), "{outcome:?}");
}

#[tokio::test]
async fn a_failed_status_write_stops_the_plan_and_names_its_step() {
    let (outcome, calls, _) = execute_plan(StatusWrite::Unavailable).await;
    assert_eq!(order(&calls), [(Method::PATCH, STATUS)]);
    let error = outcome.expect_err("the status was not written");
    assert_eq!(error.metric_label(), "write_status");
    let message = error.to_string();
    assert!(
        message.starts_with("could not write the status of BatchRun payroll: "),
        "{message}"
    );
    let event = failure_event(&error);
    assert_eq!(
        (event.type_, event.reason.as_str(), event.action.as_str()),
        (EventType::Warning, "ReconcileFailed", "WriteStatus")
    );
    assert_eq!(event.note, Some(message));
}
